"""pooledir on a Ray cluster: encode and build across workers, serve an index split into partitions.

Optional: it needs the ``distributed`` extra (``pip install "pooledir[distributed]"``), and nothing
outside this package imports Ray, so the single-machine path never pays for it. Each module imports
Ray inside its functions; :func:`require_ray` turns a missing install into an :class:`InputError`
that says what to install.
"""

from __future__ import annotations

import logging
from typing import Any

from pooledir.errors import InputError, PooledirError

log = logging.getLogger(__name__)

INSTALL_HINT = 'Ray is not installed; install the distributed extra: pip install "pooledir[distributed]"'


def require_ray() -> Any:
    """The ``ray`` module, or an :class:`InputError` that says how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401 - the extra brings both; a bare `ray` lacks Ray Data's dependencies
    except ImportError:
        raise InputError(INSTALL_HINT) from None
    return ray


def connect(address: str | None = None, **init_kwargs: Any) -> Any:
    """Join the Ray cluster at ``address`` (``"auto"``: the one started on this machine with ``ray start``).

    Without an address a local cluster is started for this process. A process already connected
    (e.g. a test session, or a script that called ``ray.init`` itself) keeps its connection.
    """
    ray = require_ray()
    if not ray.is_initialized():
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False, **init_kwargs)
        except ConnectionError as e:
            raise InputError(
                f"no Ray cluster answers at address={address!r} ({e}); start its head node with `ray start` "
                "or give the head node's address (host:6379)"
            ) from None
    return ray


def user_error(e: BaseException) -> PooledirError | None:
    """The pooledir error a Ray failure carries (a task's or actor's exception), if any.

    Ray wraps an exception raised in a worker (``RayTaskError``, Ray Data's ``UserCodeException``);
    the caller re-raises the pooledir error inside so the CLI prints one line.
    """
    seen = set()
    stack: list[BaseException | None] = [e]
    while stack:
        cur = stack.pop()
        if cur is None or id(cur) in seen:
            continue
        seen.add(id(cur))
        cause = getattr(cur, "cause", None)  # Ray's wrapper may itself subclass the cause: prefer the original
        if isinstance(cur, PooledirError) and not isinstance(cause, BaseException):
            return cur
        stack += [cur.__context__, cur.__cause__, cause]
    return None
