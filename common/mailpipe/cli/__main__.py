"""`python -m mailpipe.cli` runs the `mailpipe` command (used for profiling)."""

import sys

from . import main

sys.exit(main())
