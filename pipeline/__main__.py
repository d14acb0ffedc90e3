"""``python -m pipeline``: the same as the ``pipeline`` command."""
import sys

from .cli import entry

sys.exit(entry())
