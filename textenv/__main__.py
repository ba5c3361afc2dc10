"""``python -m textenv ARGS`` is the ``textenv`` command (:func:`textenv.apps.cli.main`)."""

from __future__ import annotations

import sys

from textenv.apps.cli import main

if __name__ == "__main__":
    sys.exit(main())
