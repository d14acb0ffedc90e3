"""``python -m board_runtime``; a bundle ships this file as ``run_model.py`` beside its copy of the package."""
import sys

sys.dont_write_bytecode = True  # a bundle stays as verified: no __pycache__ beside its files

from board_runtime.cli import main  # noqa: E402

sys.exit(main())
