"""``python -m data_tools``: see :mod:`data_tools.cli`."""

import sys

from data_tools.cli import main

sys.exit(main())
