"""Evaluation of pooledir and its peers on BEIR: loading, the embedding cache, metrics, the harness, reports.

The core library never imports this package. The public API::

    from pooledir.evaluation import EvalConfig, evaluate, markdown_table
    result = evaluate(EvalConfig(dataset=Path("beir/scifact"), checkpoint="ckpt", compare={"plaid": {}}))

Peers are pluggable systems (:mod:`pooledir.evaluation.systems`). Names are
imported on first use, as in :mod:`pooledir`.
"""

from __future__ import annotations

from pooledir._lazy import lazy_exports

_EXPORTS = {
    "BeirData": "pooledir.evaluation.beir",
    "download_beir": "pooledir.evaluation.beir",
    "load_beir": "pooledir.evaluation.beir",
    "load_qrels": "pooledir.evaluation.beir",
    "load_queries": "pooledir.evaluation.beir",
    "cache_key": "pooledir.evaluation.cache",
    "cached": "pooledir.evaluation.cache",
    "encode_cached": "pooledir.evaluation.cache",
    "RUN_KEYS": "pooledir.evaluation.harness",
    "EvalConfig": "pooledir.evaluation.harness",
    "evaluate": "pooledir.evaluation.harness",
    "measure": "pooledir.evaluation.harness",
    "drop_self_hits": "pooledir.evaluation.metrics",
    "folder_bytes": "pooledir.evaluation.metrics",
    "latency": "pooledir.evaluation.metrics",
    "run_from_hits": "pooledir.evaluation.metrics",
    "score_run": "pooledir.evaluation.metrics",
    "write_trec_run": "pooledir.evaluation.metrics",
    "machine_info": "pooledir.evaluation.machine",
    "load_results": "pooledir.evaluation.report",
    "markdown_table": "pooledir.evaluation.report",
    "merge_results": "pooledir.evaluation.report",
    "plots": "pooledir.evaluation.report",
    "ServerProcess": "pooledir.evaluation.server",
    "free_port": "pooledir.evaluation.server",
    "running_server": "pooledir.evaluation.server",
    "start_server": "pooledir.evaluation.server",
    "Context": "pooledir.evaluation.systems",
    "System": "pooledir.evaluation.systems",
    "get_system": "pooledir.evaluation.systems",
    "register_system": "pooledir.evaluation.systems",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
