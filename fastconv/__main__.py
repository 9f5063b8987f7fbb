"""``python -m fastconv``: see :mod:`fastconv.cli`."""

from .cli import main

raise SystemExit(main())
