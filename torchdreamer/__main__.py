"""``python -m torchdreamer``, the entry point ``torchrun -m torchdreamer train`` uses."""

import sys

from torchdreamer.cli import main

sys.exit(main())
