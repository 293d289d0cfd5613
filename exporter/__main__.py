"""`python -m exporter` behaves exactly like the `blockpull-exporter` console script."""

import sys

from exporter.cli import main

sys.exit(main())
