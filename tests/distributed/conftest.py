"""One local Ray cluster for the whole test session (starting one costs seconds on 2 cores)."""

from __future__ import annotations

import json
import shutil
import tempfile

import numpy as np
import pytest

from pooledir.build_shards import EncodeConfig
from tests.conftest import random_text

SHARDS_CONFIG = EncodeConfig(shard_docs=8, chunk_docs=3)


@pytest.fixture(scope="package")  # shut down after this package: the rest of the suite runs without it
def ray_cluster(tmp_path_factory):
    ray = pytest.importorskip("ray", reason='needs the distributed extra: pip install "pooledir[distributed]"')
    from ray.data import DataContext

    temp = tempfile.mkdtemp(prefix="pdr-ray-")  # short: Ray's socket paths must stay under 107 bytes
    if not ray.is_initialized():
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            _temp_dir=temp,
            object_store_memory=200 * 1024 * 1024,
        )
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    yield ray
    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory):
    """36 documents in a .jsonl file, with a blank line and a BOM to exercise the shard planner's offsets."""
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    rng = np.random.default_rng(7)
    lines = []
    for i in range(36):
        text = random_text(rng, int(rng.integers(3, 40)))
        lines.append(json.dumps({"_id": f"d{i}", "title": f"t {i}", "text": text}))
        if i == 10:
            lines.append("   ")
    path.write_text("\ufeff" + "\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def small_shards(tmp_path_factory, tiny_encoder, small_corpus):
    """The small corpus encoded in one process (pooled x2, 8 documents a shard): the reference for Ray's."""
    from pooledir.build_shards import encode_corpus
    from pooledir.corpus import iter_corpus

    out = tmp_path_factory.mktemp("serial") / "shards"
    encode_corpus(iter_corpus(small_corpus), out, tiny_encoder, SHARDS_CONFIG, show_progress=False)
    return out
