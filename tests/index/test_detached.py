"""Segments built by another process attach in one commit; bad segments are refused and lose nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from pooledir.errors import DocumentNotFoundError, InputError
from pooledir.index.detached import build_segment
from pooledir.pooled_index import PooledIndex
from tests.index.test_folder import ROOT, FakeEncoder, add, create, doc_vectors, queries, results


@pytest.fixture(params=["flat", "ivfpq"])
def index(tmp_path, request):
    idx = create(tmp_path / "i", backend=request.param, train_min_vectors=150)
    add(idx, [f"d{i}" for i in range(40)], list(range(40)))
    return idx


def build_in_other_process(out: Path, index_path: Path, ids: list[str], seeds: list[int]) -> None:
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        from tests.index.test_folder import doc_vectors
        from pooledir.corpus import Document
        from pooledir.index.detached import build_segment
        ids, seeds = {ids!r}, {seeds!r}
        docs = [Document(i, f"text of {{i}}", {{"seed": s}}) for i, s in zip(ids, seeds)]
        build_segment({str(out)!r}, {str(index_path)!r}, docs, [doc_vectors(s) for s in seeds])
    """)
    subprocess.run([sys.executable, "-c", code], check=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))


def test_segments_built_elsewhere_attach_in_one_commit(tmp_path, index):
    build_in_other_process(tmp_path / "s1", index.path, ["x0", "x1", "d5"], [500, 501, 502])
    build_in_other_process(tmp_path / "s2", index.path, ["y0"], [600])
    commit = index.info()["commit"]
    assert index.attach_segments([tmp_path / "s1", tmp_path / "s2"]) == 4
    info = index.info()
    assert info["commit"] == commit + 1 and len(index) == 43  # d5 was replaced
    assert index.get("d5").metadata == {"seed": 502}
    # the same documents added directly give the same search results
    direct = create(tmp_path / "direct", backend=index.config.backend, train_min_vectors=150)
    add(direct, [f"d{i}" for i in range(40)], list(range(40)))
    add(direct, ["x0", "x1", "d5"], [500, 501, 502])
    add(direct, ["y0"], [600])
    assert results(index, queries()) == results(direct, queries())


def break_folder(how: str, seg: Path) -> None:
    if how == "unknown":
        (seg / "segment.json").unlink()
    elif how == "corrupt":
        (file,) = [p for p in seg.iterdir() if p.name in ("segment.faiss", "segment.pq3")]
        data = file.read_bytes()
        file.write_bytes(data[: len(data) // 2])
    elif how == "lengths":  # the shard's rows say more vectors than its file holds
        lines = (seg / "docs.jsonl").read_text().splitlines()
        row = json.loads(lines[0])
        row["n_vectors"] += 1
        (seg / "docs.jsonl").write_text("\n".join([json.dumps(row), *lines[1:]]) + "\n")
        meta = json.loads((seg / "segment.json").read_text())
        meta["n_vectors"] += 1
        (seg / "segment.json").write_text(json.dumps(meta))
    elif how == "mismatch":
        lines = (seg / "docs.jsonl").read_text().splitlines()
        (seg / "docs.jsonl").write_text("\n".join(lines[1:]) + "\n")


@pytest.mark.parametrize(
    "how, msg",
    [
        ("unknown", "not a detached segment: segment.json is missing"),
        ("corrupt", "unreadable or does not match"),
        ("lengths", "unreadable or does not match"),
        ("mismatch", "docs.jsonl lists 1 documents with"),
    ],
)
def test_bad_segments_are_refused_and_nothing_is_lost(tmp_path, index, how, msg):
    good = build_segment(tmp_path / "good", index.path, *docs_and_vectors(["g0"], [700]))
    bad = build_segment(tmp_path / "bad", index.path, *docs_and_vectors(["b0", "b1"], [800, 801]))
    break_folder(how, bad)
    before = results(index, queries())
    files = sorted(p.name for p in (index.path / "segments").iterdir())
    with pytest.raises(InputError, match=msg):
        index.attach_segments([good, bad])
    assert len(index) == 40 and results(index, queries()) == before
    assert sorted(p.name for p in (index.path / "segments").iterdir()) == files
    with pytest.raises(DocumentNotFoundError):
        index.get("g0")  # the good one was not attached alone either: one commit or none
    again = PooledIndex.open(index.path, device="cpu", encoder=FakeEncoder())
    assert len(again) == 40 and results(again, queries()) == before


def test_segment_built_for_an_older_quantizer_is_refused(tmp_path):
    idx = create(tmp_path / "i", backend="ivfpq", train_min_vectors=150)
    add(idx, [f"d{i}" for i in range(40)], list(range(40)))
    seg = build_segment(tmp_path / "s", idx.path, *docs_and_vectors(["n0"], [900]))
    idx.compact(retrain=True)
    with pytest.raises(InputError, match="another quantizer"):
        idx.attach_segments([seg])
    assert len(idx) == 40


def docs_and_vectors(ids, seeds):
    from pooledir.corpus import Document

    return [Document(i, f"text of {i}", {"seed": s}) for i, s in zip(ids, seeds)], [doc_vectors(s) for s in seeds]


def test_vectors_that_do_not_fit_the_index_are_refused(tmp_path, index):
    docs, vectors = docs_and_vectors(["z"], [1])
    with pytest.raises(InputError, match="not \\(n >= 1, 16\\)"):
        build_segment(tmp_path / "s", index.path, docs, [np.ones((3, 5), np.float32)])
    with pytest.raises(InputError, match="2 vector arrays"):
        build_segment(tmp_path / "s", index.path, docs, vectors * 2)
