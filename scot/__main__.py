"""``python -m scot``: the command line (also under ``torchrun``)."""

from .cli import main

main()
