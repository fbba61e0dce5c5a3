"""``python -m testenv``: see ``testenv.cli``."""

import sys

from testenv.cli import main

sys.exit(main())
