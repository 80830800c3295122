"""The embedding cache: encode a corpus once, reuse its vectors in every run that shares the encoder.

A key covers every checkpoint file, every encoded text and every encoding
setting, so a changed input never reads stale vectors.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pooledir.evaluation.beir import BeirData

if TYPE_CHECKING:
    from pooledir.encoder import ColBERTEncoder


def _sha(h: hashlib._Hash, path: Path) -> None:
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)


def cache_key(checkpoint_dir: Path, texts: list[str], settings: dict[str, Any]) -> str:
    """A key that changes with any checkpoint file, any encoded text or any encoding setting."""
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for p in sorted(checkpoint_dir.iterdir()):
        if p.is_file():
            h.update(p.name.encode())
            _sha(h, p)
    for t in texts:
        h.update(t.encode())
        h.update(b"\0")
    return h.hexdigest()[:24]


def cached(cache_dir: Path, key: str, compute: Callable[[], list[np.ndarray]]) -> tuple[list[np.ndarray], float]:
    """Load ``key``'s arrays from the cache or compute and store them; returns (arrays, seconds to compute)."""
    folder = cache_dir / key
    if (folder / "meta.json").is_file():
        meta = json.loads((folder / "meta.json").read_text())
        flat = np.load(folder / "vectors.npy", mmap_mode="r")
        offsets = np.concatenate([[0], np.cumsum(meta["lengths"])])
        return [np.asarray(flat[a:b]) for a, b in zip(offsets[:-1], offsets[1:])], meta["seconds"]
    t = time.perf_counter()
    arrays = compute()
    seconds = time.perf_counter() - t
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache_dir, prefix=".tmp-"))
    try:
        np.save(tmp / "vectors.npy", np.concatenate(arrays).astype(np.float16))
        (tmp / "meta.json").write_text(json.dumps({"lengths": [len(a) for a in arrays], "seconds": seconds}))
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return arrays, seconds


def encode_cached(
    encoder: ColBERTEncoder, data: BeirData, cache_dir: Path, show_progress: bool = False
) -> tuple[list[np.ndarray], float, np.ndarray]:
    """Document vectors, the seconds their encoding took, and query vectors (nq, Lq, dim), through the cache."""
    texts = [d.text for d in data.documents]
    key = cache_key(encoder.path, texts, encoder.settings.__dict__ | {"kind": "documents"})
    doc_vecs, encode_s = cached(cache_dir, key, lambda: encoder.encode_documents(texts, show_progress=show_progress))
    qtexts = list(data.queries.values())
    qkey = cache_key(encoder.path, qtexts, encoder.settings.__dict__ | {"kind": "queries"})
    (qflat,), _ = cached(cache_dir, qkey, lambda: [encoder.encode_queries(qtexts).reshape(-1, encoder.dim)])
    return doc_vecs, encode_s, np.asarray(qflat, dtype=np.float32).reshape(len(qtexts), -1, encoder.dim)
