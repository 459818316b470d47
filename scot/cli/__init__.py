"""The ``scot`` command line (``python -m scot`` and the ``scot`` script)."""

from .commands import app, main

__all__ = ["app", "main"]
