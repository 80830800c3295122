"""`pooledir encode --ray` claims its shard folder with the local encode's lock (issue 18).

Before, the Ray driver opened the folder with ``ShardWriter.open`` alone: a Ray encode and a local one (or two
Ray encodes) wrote one folder side by side. The claim comes before the cluster is joined, so these tests
start no Ray cluster: the refusals happen first, and a stand-in for ``connect`` stops the one that goes on.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pooledir.build_shards import encode_shard_folder
from pooledir.errors import InputError
from pooledir.outdir import claim_shard_folder
from tests.distributed.conftest import SHARDS_CONFIG
from tests.test_package import ROOT

pytest.importorskip("ray", reason='needs the distributed extra: pip install "pooledir[distributed]"')

BUSY = "is being written by another encode"


def test_a_ray_encode_and_a_local_one_refuse_each_others_folder(
    monkeypatch, tmp_path, tiny_ckpt, tiny_encoder, tiny_docs, small_corpus
):
    import pooledir.distributed
    from pooledir.distributed.encode import encode_corpus_ray

    def ray_encode(out):
        return encode_corpus_ray(small_corpus, out, tiny_ckpt, SHARDS_CONFIG, device="cpu", show_progress=False)

    # a local encode holds the folder: the Ray encode is refused, before it joins a cluster
    out = tmp_path / "new" / "shards"
    refused = []

    def local_encoder():
        with pytest.raises(InputError, match=BUSY) as e:
            ray_encode(out)
        refused.append(str(e.value))
        return tiny_encoder

    encode_shard_folder(tiny_docs[:20], out, local_encoder, SHARDS_CONFIG, show_progress=False)
    assert refused and refused[0].startswith(f"{out} {BUSY} (it holds {out / '.encode.lock'})")

    # a Ray encode holds the folder (it claimed it, then joins the cluster): a local and a Ray encode are refused
    held = tmp_path / "held" / "shards"
    seen = []

    def connect(address=None):
        with pytest.raises(InputError, match=BUSY):
            encode_shard_folder(tiny_docs[:20], held, tiny_encoder, SHARDS_CONFIG, show_progress=False)
        with pytest.raises(InputError, match=BUSY):
            ray_encode(held)
        seen.append(sorted(p.name for p in held.iterdir()))
        raise InputError("no cluster in this test")

    monkeypatch.setattr(pooledir.distributed, "connect", connect)
    with pytest.raises(InputError, match="^no cluster in this test$"):
        ray_encode(held)
    assert seen == [[".encode.lock"]]  # the claim's lock, nothing of the refused encodes
    assert not (tmp_path / "held").exists()  # it failed before a shard: what its claim made is gone


def test_cli_encode_ray_into_a_folder_another_encode_writes_is_one_line(tmp_path, tiny_ckpt, small_corpus):
    out = tmp_path / "shards"
    argv = ["encode", str(small_corpus), "--out", str(out), "--checkpoint", str(tiny_ckpt), "--ray", "--device", "cpu"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    with claim_shard_folder(out, may_continue=False):  # what a local `pooledir encode` holds while it runs
        r = subprocess.run([sys.executable, "-m", "pooledir.cli", *argv], capture_output=True, text=True, env=env)
        assert sorted(p.name for p in out.iterdir()) == [".encode.lock"]
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.strip() == f"error: {out} {BUSY} (it holds {out / '.encode.lock'}); wait for it to finish, " + (
        "or pick another folder"
    )
