"""Runs inside fast-plaid's own virtual environment (fast-plaid pins its own torch), never imported by pooledir.

Reads one JSON command per line on stdin and answers one JSON line on stdout; vectors come through
.npy files, so both sides index and search identical vectors:

* ``{"op": "build", "index": DIR, "vectors": FLAT.npy, "lengths": LENGTHS.npy, "nbits": 2}``
* ``{"op": "search", "queries": Q.npy, "k": 10}`` -> ``{"ok": true, "hits": [[[doc, score], ...], ...]}``
* ``{"op": "quit"}``

Anything fast-plaid prints goes to stderr, so stdout carries only the answers.
"""

from __future__ import annotations

import contextlib
import json
import sys
from typing import Any


def main() -> None:  # noqa: D103
    import numpy as np
    import torch
    from fast_plaid import search as fast_plaid_search

    answers = sys.stdout
    index: Any = None  # fast_plaid_search.FastPlaid once built (untyped)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "quit":
            break
        try:
            with contextlib.redirect_stdout(sys.stderr):
                if cmd["op"] == "build":
                    flat = np.load(cmd["vectors"])
                    bounds = np.cumsum(np.load(cmd["lengths"]))[:-1]
                    docs = [torch.from_numpy(np.ascontiguousarray(d, dtype=np.float32)) for d in np.split(flat, bounds)]
                    index = fast_plaid_search.FastPlaid(index=cmd["index"], device="cpu")
                    index.create(documents_embeddings=docs, nbits=int(cmd["nbits"]))
                    reply = {"ok": True, "torch": torch.__version__}
                elif cmd["op"] == "search":
                    Q = torch.from_numpy(np.load(cmd["queries"]).astype(np.float32))
                    found = index.search(queries_embeddings=Q, top_k=int(cmd["k"]), show_progress=False)
                    reply = {"ok": True, "hits": [[[int(d), float(s)] for d, s in hits] for hits in found]}
                else:
                    reply = {"ok": False, "error": f"unknown op {cmd['op']!r}"}
        except Exception as e:  # the parent reports it
            reply = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        answers.write(json.dumps(reply) + "\n")
        answers.flush()


if __name__ == "__main__":
    main()
