"""``python -m gatekeeper`` runs the CLI."""

import sys

from gatekeeper.cli import main

sys.exit(main())
