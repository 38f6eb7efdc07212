"""``python -m cli``: the same as the ``flux-service`` command (the service runs trainings this way)."""

import sys

from cli.main import main

sys.exit(main())
