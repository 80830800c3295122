"""pooledir: multi-vector (ColBERT) retrieval with token pooling.

The public API::

    from pooledir import PooledIndex, IndexConfig, SearchParams, read_corpus
    index = PooledIndex.create("my-index", checkpoint="path/to/colbert", config=IndexConfig(pool_factor=2))
    index.add(read_corpus("corpus.jsonl"), show_progress=True)
    hits = index.search("what is token pooling?", k=10)[0]

Names are imported on first use, so ``import pooledir`` (and the CLI's
``--help``) does not pay for torch, faiss or scipy.
"""

from __future__ import annotations

import os

from pooledir._lazy import lazy_exports

# torch and faiss each run an OpenMP pool; busy-waiting workers of one steal the cores from the other
# (measured: one query 99 -> 71 ms on 2 cores, and 5-7x on a crowded machine). It only takes effect
# before either loads, so a user who imports torch first, or sets the variable, keeps their choice.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

_EXPORTS = {
    "load_qrels": "pooledir.evaluation.beir",
    "load_queries": "pooledir.evaluation.beir",
    "convert_checkpoint": "pooledir.checkpoint",
    "minilm_path": "pooledir.checkpoint",
    "BuildConfig": "pooledir.build",
    "EncodeConfig": "pooledir.build_shards",
    "build_index": "pooledir.build",
    "build_index_from_shards": "pooledir.build",
    "encode_corpus": "pooledir.build_shards",
    "ShardWriter": "pooledir.shards",
    "iter_shards": "pooledir.shards",
    "read_shard_manifest": "pooledir.shards",
    "count_documents": "pooledir.corpus",
    "Document": "pooledir.corpus",
    "check_metadata": "pooledir.corpus",
    "check_utf8": "pooledir.corpus",
    "document_from_record": "pooledir.corpus",
    "document_text": "pooledir.corpus",
    "iter_corpus": "pooledir.corpus",
    "read_corpus": "pooledir.corpus",
    "ColBERTEncoder": "pooledir.encoder",
    "encoder_for_index": "pooledir.encoder",
    "encoder_key": "pooledir.encoder",
    "check_backends": "pooledir.encoder",
    "CheckpointError": "pooledir.errors",
    "DocumentNotFoundError": "pooledir.errors",
    "IndexCorruptError": "pooledir.errors",
    "InputError": "pooledir.errors",
    "NoSpaceError": "pooledir.errors",
    "PooledirError": "pooledir.errors",
    "AddResult": "pooledir.pooled_index",
    "Hit": "pooledir.pooled_index",
    "IndexConfig": "pooledir.pooled_index",
    "PooledIndex": "pooledir.pooled_index",
    "read_manifest": "pooledir.pooled_index",
    "check_texts": "pooledir.encoder",
    "pool_embeddings": "pooledir.pooling",
    "SearchParams": "pooledir.search",
}

# ``maxsim`` is also the name of its module: once anything imported ``pooledir.maxsim``, the package attribute
# would be the module, not the function, so the function is bound here (numpy only)
from pooledir.maxsim import maxsim  # noqa: E402, F401

__all__ = sorted([*_EXPORTS, "maxsim"])
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
