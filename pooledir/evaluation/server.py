"""Run ``pooledir serve`` on a free loopback port: for load tests, the demo and live tests.

The server is a separate process started through the CLI, so nothing here
imports the service; traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"


def free_port(host: str = HOST) -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class ServerProcess:
    """A running ``pooledir serve``: its process, base URL, command line and log file (if any)."""

    proc: subprocess.Popen[bytes]
    url: str
    cmd: list[str]
    log_path: Path | None = None

    def log(self, tail: int = 3000) -> str:
        """The end of the server's log ("" without a log file)."""
        return self.log_path.read_text(errors="replace")[-tail:] if self.log_path else ""

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout`` seconds."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=1) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def start_server(
    index_dirs: Sequence[str | os.PathLike[str]],
    port: int | None = None,
    device: str = "cpu",
    env: dict[str, str] | None = None,
    log_path: str | os.PathLike[str] | None = None,
    ready_timeout: float = 90,
) -> ServerProcess:
    """Start ``pooledir serve INDEX...`` on ``port`` (default: a free one) and wait for ``/readyz``.

    ``env`` is added to this process's environment (model hubs stay offline);
    output goes to ``log_path``, else nowhere. Raises ``RuntimeError`` with the
    log's end if the server exits or is not ready within ``ready_timeout`` seconds.
    """
    port = port or free_port()
    cmd = [sys.executable, "-m", "pooledir.cli", "serve", *map(str, index_dirs), "--port", str(port)]
    cmd += ["--host", HOST, "--device", device]
    full_env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1") | (env or {})
    log_path = Path(log_path) if log_path else None
    with open(log_path, "w") if log_path else open(os.devnull, "w") as out:  # a file, not a pipe nobody drains
        proc = subprocess.Popen(cmd, env=full_env, stdout=out, stderr=subprocess.STDOUT)
    server = ServerProcess(proc, f"http://{HOST}:{port}", cmd, log_path)
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with code {proc.returncode}: {server.log()}")
        if _ready(server.url):
            return server
        time.sleep(0.3)
    server.stop()
    raise RuntimeError(f"the server was not ready within {ready_timeout:.0f} s: {server.log()}")


@contextmanager
def running_server(index_dirs: Sequence[str | os.PathLike[str]], **kwargs: Any) -> Iterator[ServerProcess]:
    """:func:`start_server` for the block, stopped after it."""
    server = start_server(index_dirs, **kwargs)
    try:
        yield server
    finally:
        server.stop(30)
