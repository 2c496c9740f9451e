"""``python -m cnnkit`` (also what ``torchrun -m cnnkit`` runs)."""

import sys

from cnnkit.cli import main

sys.exit(main())
