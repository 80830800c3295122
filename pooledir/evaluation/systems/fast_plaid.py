"""PyLate's PLAID engine (fast-plaid) on the very vectors pooledir indexes, run in its own virtual environment.

Every fast-plaid release pins an exact torch (1.7.0.2110: ``torch==2.11.0``), which cannot live beside
this project's torch, so fast-plaid runs in a virtual environment of its own (``make fast-plaid-venv``)
as a child process (``fast_plaid_runner.py``); vectors go both ways through .npy files. Queries are
encoded by our encoder inside the timed search, as for the other systems. Without that environment,
or when fast-plaid does not import there, the harness skips it with the reason.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pooledir.corpus import Document
from pooledir.errors import InputError
from pooledir.evaluation.metrics import folder_bytes
from pooledir.evaluation.systems.base import Context, SystemUnavailable
from pooledir.pooled_index import Hit

#: where ``make fast-plaid-venv`` puts fast-plaid's environment (overridden by POOLEDIR_FAST_PLAID_PYTHON)
DEFAULT_PYTHON = Path(".cache/fast-plaid-venv/bin/python")
RUNNER = Path(__file__).with_name("fast_plaid_runner.py")


class FastPlaidSystem:
    """fast-plaid at ``nbits`` residual bits, optionally on pooled vectors, driven through a child process."""

    def __init__(self, python: Path, nbits: int, pool_factor: int = 1) -> None:
        self.python = python
        self.nbits = nbits
        self.pool_factor = pool_factor
        self.name = f"fast-plaid-nbits{nbits}" + (f"-pf{pool_factor}" if pool_factor > 1 else "")
        self._proc: subprocess.Popen[str] | None = None
        self._row: dict[str, Any] = {}

    def _ask(self, **cmd: Any) -> dict[str, Any]:
        proc = self._proc
        if proc is None or proc.stdin is None or proc.stdout is None:
            raise RuntimeError(f"{self.name}: call build() first (it starts fast-plaid's runner)")
        proc.stdin.write(json.dumps(cmd) + "\n")
        proc.stdin.flush()
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"fast-plaid's runner exited (code {proc.wait()}); its stderr is above")
        reply: dict[str, Any] = json.loads(line)
        if not reply.get("ok"):
            raise RuntimeError(f"fast-plaid failed: {reply.get('error')}")
        return reply

    def build(self, context: Context, documents: Sequence[Document], vectors: Sequence[np.ndarray]) -> None:  # noqa: D102
        from pooledir.pooling import pool_embeddings

        t = time.perf_counter()
        vecs = pool_embeddings(vectors, self.pool_factor, device=context.device) if self.pool_factor > 1 else vectors
        pool_s = time.perf_counter() - t
        self.ids = [d.id for d in documents]
        self.encoder = context.encoder
        self._tmp = Path(tempfile.mkdtemp(dir=context.workdir, prefix="fast-plaid-io-"))
        self._index_path = context.workdir / self.name
        np.save(self._tmp / "vectors.npy", np.concatenate(vecs).astype(np.float16))
        np.save(self._tmp / "lengths.npy", np.array([len(v) for v in vecs], dtype=np.int64))
        # the runner's text, not its path: run as a file, its folder (this one) would shadow fast_plaid
        self._proc = subprocess.Popen(
            [str(self.python), "-c", RUNNER.read_text()], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        reply = self._ask(
            op="build",
            index=str(self._index_path),
            vectors=str(self._tmp / "vectors.npy"),
            lengths=str(self._tmp / "lengths.npy"),
            nbits=self.nbits,
        )
        self._row = {
            "system": "fast-plaid",
            "index": f"fast-plaid (torch {reply.get('torch')})",
            "pool_factor": self.pool_factor,
            "nbits": self.nbits,
            "vectors": int(sum(len(v) for v in vecs)),
            "pool_s": pool_s,
        }

    def search(self, queries: Sequence[str], k: int, vectors: np.ndarray | None = None) -> list[list[Hit]]:  # noqa: D102
        Q = self.encoder.encode_queries(list(queries)) if vectors is None else vectors
        np.save(self._tmp / "queries.npy", np.asarray(Q, dtype=np.float32))
        hits = self._ask(op="search", queries=str(self._tmp / "queries.npy"), k=k)["hits"]
        return [[Hit(self.ids[d], s) for d, s in row] for row in hits]

    def describe(self) -> dict[str, Any]:  # noqa: D102
        return dict(self._row)

    def bytes(self) -> dict[str, int]:  # noqa: D102
        size = folder_bytes(self._index_path)
        return {"index_bytes": size, "vector_bytes": size, "search_bytes": size}

    def close(self) -> None:  # noqa: D102
        proc = self._proc
        if proc is not None and proc.poll() is None and proc.stdin is not None:
            proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
            proc.stdin.close()
            proc.wait(timeout=60)
        self._proc = None


def check_environment(python: Path) -> str:
    """fast-plaid's torch version in ``python``'s environment, or :class:`SystemUnavailable` with the reason."""
    if not python.is_file():
        raise SystemUnavailable(
            f"fast-plaid's virtual environment is missing ({python} does not exist): `make fast-plaid-venv` "
            "creates it (fast-plaid 1.7.0.2110 with the torch==2.11.0 it pins; PyPI's build of that torch "
            "brings about 3 GB of CUDA wheels and runs on CPU as well)"
        )
    probe = subprocess.run(
        [str(python), "-c", "import fast_plaid, torch; print(torch.__version__)"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["no output"])[-1]
        raise SystemUnavailable(f"fast-plaid does not import in {python}: {last}")
    return probe.stdout.strip()


def systems(
    nbits: Sequence[int] = (2, 4), pool_factors: Sequence[int] = (1,), python: str | None = None
) -> list[FastPlaidSystem]:
    """One fast-plaid system per (pool factor, residual bit count); its environment is checked here."""
    from pooledir.pooling import check_pool_factor

    for b in nbits:
        if b not in (1, 2, 4, 8):
            raise InputError(f"fast-plaid nbits={b!r} is not one of 1, 2, 4, 8")
    factors = [check_pool_factor(f) for f in pool_factors]
    exe = Path(python or os.environ.get("POOLEDIR_FAST_PLAID_PYTHON") or DEFAULT_PYTHON)
    check_environment(exe)
    return [FastPlaidSystem(exe, b, f) for f in factors for b in nbits]
