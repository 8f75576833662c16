"""``python -m framework.cli``: the ``segearth`` command (how the sweep controller starts its trial jobs)."""

import sys

from framework.cli.main import main

sys.exit(main())
