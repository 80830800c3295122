"""A folder build through the library (what ``pooledir index`` runs): interrupted, resumed, refused, cleaned up."""

from __future__ import annotations

import numpy as np
import pytest

from pooledir.build_folder import (
    BuildHooks,
    BuildOptions,
    ResumeConflict,
    build_index_folder,
    build_index_folder_from_shards,
)
from pooledir.corpus import Document
from pooledir.errors import InputError
from pooledir.pooled_index import IndexConfig, PooledIndex
from pooledir.search import SearchParams
from tests.test_build import crashing


def options(ckpt, **kw) -> BuildOptions:
    return BuildOptions(checkpoint=ckpt, device="cpu", chunk_docs=10, show_progress=False, **kw)


def hooks(lines: list[str]) -> BuildHooks:
    return BuildHooks(resume_hint="resume=True", warn=lines.append, stopped=lines.append)


def hits(path, queries: list[str]) -> list[list[tuple[str, float]]]:
    with PooledIndex.open(path, device="cpu") as idx:
        exact = SearchParams(k=10, nprobe=1, candidates_per_token=1000, rerank=120)
        return [[(h.id, h.score) for h in q] for q in idx.search(queries, params=exact)]


def test_a_build_stopped_by_its_input_and_resumed_equals_one_uninterrupted_build(tmp_path, tiny_ckpt, tiny_docs):
    """Issue 18, item 6: a Python user resumes a build (on main there was no such function, only the CLI's)."""
    config = IndexConfig(backend="flat", pool_factor=2)
    whole = build_index_folder(iter(tiny_docs), tmp_path / "whole", config, options(tiny_ckpt))
    assert (whole.build.added, whole.documents) == (120, 120)

    out, lines = tmp_path / "stopped", []
    with pytest.raises(RuntimeError, match="simulated crash"):
        build_index_folder(crashing(tiny_docs, 75), out, config, options(tiny_ckpt), hooks=hooks(lines))
    assert lines == [f"stopped; the 70 documents committed to {out} are kept; continue with: resume=True"]
    # resumed without repeating the settings: the index keeps its own
    report = build_index_folder(iter(tiny_docs), out, None, options(None, pooling_chosen=False), resume=True)
    assert (report.build.skipped, report.build.added, report.documents) == (70, 50, 120)

    with PooledIndex.open(out, device="cpu") as a, PooledIndex.open(tmp_path / "whole", device="cpu") as b:
        assert [a.get(d.id) for d in tiny_docs] == [b.get(d.id) for d in tiny_docs]
        assert (a.describe().vectors, a.describe().vectors_before_pooling) == (
            whole.info.vectors,
            whole.info.vectors_before_pooling,
        )
    queries = ["protein expression in brain cells", tiny_docs[7].text, tiny_docs[100].text]
    resumed, expected = hits(out, queries), hits(tmp_path / "whole", queries)
    assert [[i for i, _ in q] for q in resumed] == [[i for i, _ in q] for q in expected]
    np.testing.assert_allclose([[s for _, s in q] for q in resumed], [[s for _, s in q] for q in expected], atol=1e-5)


def test_a_pooledir_error_after_a_commit_keeps_the_index_and_says_how_to_resume(tmp_path, tiny_ckpt, tiny_docs):
    out = tmp_path / "dup"
    docs = tiny_docs[:25] + [Document("d3", "again")]
    with pytest.raises(
        InputError,
        match=r"'d3' .* already in the index.*\(the 20 documents committed to .* are kept: "
        r"fix that, then continue with: resume=True\)",
    ):
        build_index_folder(docs, out, IndexConfig(backend="flat"), options(tiny_ckpt), hooks=hooks([]))
    with PooledIndex.open(out, device="cpu") as idx:
        assert len(idx) == 20


def test_a_build_that_committed_nothing_leaves_no_folder(tmp_path, tiny_ckpt, tiny_docs):
    out = tmp_path / "new" / "index"
    with pytest.raises(RuntimeError, match="simulated crash"):
        build_index_folder(crashing(tiny_docs, 5), out, IndexConfig(backend="flat"), options(tiny_ckpt))
    assert not (tmp_path / "new").exists()
    with pytest.raises(InputError, match="no documents given"):
        build_index_folder([], out, options=options(tiny_ckpt))
    with pytest.raises(InputError, match="needs a checkpoint"):
        build_index_folder(tiny_docs, out, options=options(None))
    assert not (tmp_path / "new").exists()


def test_a_resume_with_other_pooling_or_checkpoint_is_refused_and_loses_nothing(tmp_path, tiny_ckpt, tiny_docs):
    out = tmp_path / "i"
    with pytest.raises(RuntimeError):
        build_index_folder(crashing(tiny_docs, 35), out, IndexConfig(backend="flat"), options(tiny_ckpt))
    with pytest.raises(ResumeConflict, match="pools x2, not x3; resume it without a pooling setting") as e:
        build_index_folder(tiny_docs, out, IndexConfig(backend="flat", pool_factor=3), options(None), resume=True)
    assert (e.value.setting, e.value.index_value, e.value.given) == ("pooling", "x2", "x3")
    with pytest.raises(ResumeConflict, match="was built with the checkpoint"):
        build_index_folder(tiny_docs, out, options=options(tmp_path, pooling_chosen=False), resume=True)
    with PooledIndex.open(out, device="cpu") as idx:
        assert len(idx) == 30


def test_shards_build_into_a_folder_and_resume(tmp_path, tiny_encoder, tiny_docs):
    from pooledir.build_shards import EncodeConfig, encode_corpus

    shards = tmp_path / "shards"
    encode_corpus(tiny_docs, shards, tiny_encoder, EncodeConfig(pool_factor=2, shard_docs=40), show_progress=False)
    lines: list[str] = []
    report = build_index_folder_from_shards(
        [shards], tmp_path / "i", IndexConfig(backend="flat"), options(None, pooling_chosen=False), hooks=hooks(lines)
    )
    assert (report.documents, report.info.pool_factor, lines) == (120, 2, [])
    again = build_index_folder_from_shards(
        [shards], tmp_path / "i", options=options(None, pooling_chosen=False), resume=True
    )
    assert (again.build.skipped, again.build.added) == (120, 0)
