"""`python -m geometry.report MODULE:FACTORY --data ...`: see `geometry.report.cli`."""

import sys

from geometry.report.cli import main

sys.exit(main())
