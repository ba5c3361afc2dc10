"""``textenv serve``: the web app where people play the policy and rank completions (issue 16, in progress)."""
