"""``textenv serve``: the web app where people play the policy and rank completions (docs/serve.md).

* :mod:`~textenv.apps.serve.command`: the flags, their checks, the running server (``add_arguments``, ``run``);
* :mod:`~textenv.apps.serve.app`: the Starlette app (pages, static files, the JSON API, the guard);
* :mod:`~textenv.apps.serve.labelling`: the labelling desk (items, sessions, leases, the atomic appender);
* :mod:`~textenv.apps.serve.games`: the Play page's games on :class:`~textenv.apps.play.PlaySession`;
* :mod:`~textenv.apps.serve.model_worker`: the one thread that calls the models, behind a bounded queue;
* :mod:`~textenv.apps.serve.requests`: the checks of every request field.

Only ``command`` is imported with the package (no web framework needed to build the ``textenv`` parser).
"""

from textenv.apps.serve.command import add_arguments, run

__all__ = ["add_arguments", "run"]
