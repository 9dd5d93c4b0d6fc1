"""``python -m syncnotify``: how ``up`` and ``worker --processes`` start their children."""

import sys

from syncnotify.cli import main

sys.exit(main())
