"""The on-board runtime: loads a bundle's artifacts and runs or times them with numpy and the runtime alone.

A bundle ships this package beside ``run_model.py`` (a copy of ``__main__.py``); it imports nothing from
the pipeline, so that a board needs only Python, numpy and the runtimes its artifacts use. It owns the
schemas of the bundle manifest and of the results it writes (``schemas``).
"""
