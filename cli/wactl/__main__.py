"""``python -m wactl``."""

import sys

from wactl.main import main

sys.exit(main())
