"""``python -m daq_search``: the ``daq-search`` command line."""

from .cli import main

raise SystemExit(main())
