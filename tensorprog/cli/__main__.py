"""``python -m tensorprog.cli``: the same as the ``tensorprog`` command."""

from .main import main

main()
