"""The ``pooledir`` command line: index, encode, add, delete, search, info, compact, upgrade, serve, eval.

One module per command group (:mod:`.build`, :mod:`.query`, :mod:`.admin`, :mod:`.serve`, :mod:`.eval`), each
registering its commands on the app of :mod:`._app`, which also maps failures to one line and an exit code.
Heavy modules (torch, faiss, transformers) are imported inside the commands so ``pooledir --help`` stays instant.
"""

from __future__ import annotations

from pooledir.cli._app import app, main, open_index, os_error_line, sqlite_error_line
from pooledir.cli._common import default_checkpoint

# importing a group registers its commands; `pooledir --help` lists them in this order
# isort: off
import pooledir.cli.build  # noqa: E402
import pooledir.cli.query  # noqa: E402
import pooledir.cli.admin  # noqa: E402
import pooledir.cli.serve  # noqa: E402
import pooledir.cli.eval  # noqa: E402, F401
# isort: on

__all__ = ["app", "default_checkpoint", "main", "open_index", "os_error_line", "sqlite_error_line"]
