"""``python -m board_runtime``; a bundle ships this file as ``run_model.py`` beside its copy of the package."""
import sys

from board_runtime.cli import main

sys.exit(main())
