"""``python -m tests.fuzz --seed 1 --count 10000``: see :mod:`tests.fuzz.harness`."""

import sys

from .harness import main

sys.exit(main())
