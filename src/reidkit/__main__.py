"""`python -m reidkit ...` (and `torchrun ... -m reidkit train ...`): the same as the `reidkit` command."""

import sys

from .cli.main import main

sys.exit(main())
