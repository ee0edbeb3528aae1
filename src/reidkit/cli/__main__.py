"""`python -m reidkit.cli ...` runs the `reidkit` command."""

import sys

from .main import main

sys.exit(main())
