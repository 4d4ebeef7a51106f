"""``python -m learnedopt ...`` is the ``learnedopt`` command."""

import sys

from learnedopt.cli import main

sys.exit(main())
