"""``python -m plpp.results``: the ``plpp-results`` command line."""

from .cli import main

raise SystemExit(main())
