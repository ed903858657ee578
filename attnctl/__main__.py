"""``python -m attnctl``: the same command as the ``attnctl`` console script (and ``accelerate launch -m attnctl``)."""

from attnctl.cli import main

raise SystemExit(main())
