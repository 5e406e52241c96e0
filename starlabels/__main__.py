"""``python -m starlabels``: the same command as the ``starlabels`` console script."""
import sys

from .cli import main

sys.exit(main())
