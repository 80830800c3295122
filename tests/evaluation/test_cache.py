from __future__ import annotations

import json

from pooledir.evaluation import cache_key


def test_cache_key_changes_with_text_checkpoint_and_settings(tiny_ckpt, tmp_path):
    import shutil

    key = cache_key(tiny_ckpt, ["a", "b"], {"doc_maxlen": 64})
    assert key == cache_key(tiny_ckpt, ["a", "b"], {"doc_maxlen": 64})
    assert key != cache_key(tiny_ckpt, ["a", "c"], {"doc_maxlen": 64})
    assert key != cache_key(tiny_ckpt, ["a", "b"], {"doc_maxlen": 65})
    other = tmp_path / "ck"
    shutil.copytree(tiny_ckpt, other)
    meta = json.loads((other / "artifact.metadata").read_text()) | {"note": "changed"}
    (other / "artifact.metadata").write_text(json.dumps(meta))
    assert key != cache_key(other, ["a", "b"], {"doc_maxlen": 64})
