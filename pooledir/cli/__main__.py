"""``python -m pooledir.cli``: the ``pooledir`` command."""

from __future__ import annotations

from pooledir.cli import main

if __name__ == "__main__":
    main()
