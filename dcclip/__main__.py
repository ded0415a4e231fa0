"""``python -m dcclip``: the same CLI, so ``torchrun -m dcclip distill ...`` launches one process per rank."""

import sys

from dcclip.cli import main

sys.exit(main())
