"""``python -m diffbook.bench CHAPTER [options]``: see :mod:`diffbook.bench`."""

import sys

from . import main

sys.exit(main())
