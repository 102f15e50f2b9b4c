"""Writing to standard output. Light (no pipeline import), so that main.py can catch a failed
write and Ctrl-C before the commands load."""

from __future__ import annotations

import json
import sys


class OutputError(Exception):
    """Standard output could not be written (a closed pipe, a full disk)."""

    def __init__(self, error: OSError):
        super().__init__(error.strerror)
        self.error = error


def out(text: str) -> None:
    """Write to stdout; a failed write is told apart from every other OSError."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except OSError as err:
        raise OutputError(err) from None


def out_json(data: dict) -> None:
    out(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
