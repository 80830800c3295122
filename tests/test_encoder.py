from __future__ import annotations

import json

import numpy as np
import pytest

from pooledir.checkpoint import convert_checkpoint, orthogonal_projection
from pooledir.encoder import ColBERTEncoder
from pooledir.errors import CheckpointError, InputError

TEXTS = [
    "The tumor cells, in mice, showed increased expression!",
    "a b c",
    "vitamin d and bone density: a study of patients with heart disease; results? reduced risk.",
    "",
]
QUERIES = ["does vitamin d reduce risk?", "cancer", "immune response of t cells to virus infection in humans"]


def test_documents_keep_input_order_and_are_unit_float16(tiny_encoder):
    docs = ["short", "a much longer document about protein expression in cells", "mid size text"]
    out = tiny_encoder.encode_documents(docs)
    single = [tiny_encoder.encode_documents([d])[0] for d in docs]
    for a, b in zip(out, single):
        assert a.dtype == np.float16
        assert np.allclose(a, b, atol=2e-3)
        assert np.allclose(np.linalg.norm(a.astype(np.float32), axis=1), 1, atol=1e-2)


def test_bad_texts(tiny_encoder):
    with pytest.raises(InputError, match="query 0 is empty"):
        tiny_encoder.encode_queries(["  "])
    with pytest.raises(InputError, match="single string"):
        tiny_encoder.encode_queries("one string")


def test_hub_id_offline_says_to_pass_a_local_folder():
    with pytest.raises(CheckpointError, match="pass a local checkpoint folder"):
        ColBERTEncoder("colbert-ir/colbertv2.0", device="cpu")


def test_missing_checkpoint_and_cuda(tmp_path, tiny_ckpt):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        ColBERTEncoder(tmp_path / "nope" / "deeper", device="cpu")
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="torch sees no CUDA GPU"):
            ColBERTEncoder(tiny_ckpt, device="cuda")


#: the GPU runs the model under float16 autocast (ColBERTEncoder._forward), the CPU in float32: each unit
#: vector's entries agree to GPU_ENCODING_ATOL and the two vectors' cosine is at least GPU_ENCODING_MIN_COS
GPU_ENCODING_ATOL = 1e-2
GPU_ENCODING_MIN_COS = 0.999


def assert_close_unit_rows(a: np.ndarray, b: np.ndarray) -> None:
    """Same shape, entries within GPU_ENCODING_ATOL, each non-zero row's cosine >= GPU_ENCODING_MIN_COS."""
    assert a.shape == b.shape and np.abs(a - b).max() <= GPU_ENCODING_ATOL
    rows = np.abs(b).sum(-1) > 0  # zero rows (padding without query augmentation) have no direction
    assert (a * b).sum(-1)[rows].min() >= GPU_ENCODING_MIN_COS


def test_assert_close_unit_rows_sees_a_turned_vector():
    x = np.eye(4, dtype=np.float32)
    assert_close_unit_rows(x + 1e-3, x)
    with pytest.raises(AssertionError):
        assert_close_unit_rows(x[[1, 0, 2, 3]], x)


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda_available(), reason="needs a CUDA GPU")
def test_cuda_encoding_matches_cpu(tiny_ckpt, tiny_encoder):
    """Queries and documents encoded on the GPU equal the CPU's within the stated tolerance (same token counts)."""
    gpu = ColBERTEncoder(tiny_ckpt, device="cuda", batch_size=8)
    texts = [t for t in TEXTS if t] * 3  # several batches, mixed lengths
    cpu_docs = tiny_encoder.encode_documents(texts, dtype="float32")
    for a, b in zip(gpu.encode_documents(texts, dtype="float32"), cpu_docs, strict=True):
        assert_close_unit_rows(a, b)
    assert_close_unit_rows(gpu.encode_queries(QUERIES), tiny_encoder.encode_queries(QUERIES))


def test_projection_is_seeded_and_orthonormal():
    a = orthogonal_projection(32, 16, seed=3)
    assert np.allclose(a @ a.T, np.eye(16), atol=1e-5)
    assert np.array_equal(a, orthogonal_projection(32, 16, seed=3))
    assert not np.array_equal(a, orthogonal_projection(32, 16, seed=4))
    with pytest.raises(CheckpointError, match="larger than the encoder's hidden size"):
        orthogonal_projection(16, 32, seed=0)


def test_convert_rejects_non_encoder(tmp_path):
    with pytest.raises(CheckpointError, match="config.json is missing"):
        convert_checkpoint(tmp_path, tmp_path / "out")


def test_encoder_is_safe_to_share_between_threads(tiny_encoder):
    """Concurrent query and document encoding (as the service does) must not trip the tokenizer."""
    from concurrent.futures import ThreadPoolExecutor

    def work(i):
        if i % 2:
            return tiny_encoder.encode_queries([f"cancer cells {i}"]).shape
        return len(tiny_encoder.encode_documents([f"vitamin bone study {i}"] * 3))

    with ThreadPoolExecutor(8) as ex:
        results = list(ex.map(work, range(64)))
    assert all(r == (1, 16, 16) for r in results[1::2]) and all(r == 3 for r in results[0::2])


def plain_token_vectors(encoder: ColBERTEncoder, text: str) -> np.ndarray:
    """The encoder's token outputs with no ColBERT conventions: plain transformers, projected, normalised."""
    import torch

    enc = encoder.tokenizer([text], return_tensors="pt", truncation=True, max_length=encoder.settings.query_maxlen)
    with torch.inference_mode():
        out = encoder.linear(encoder.model(**enc)[0])
    return torch.nn.functional.normalize(out, dim=2)[0].numpy()


def test_conventions_off_give_plain_token_vectors_and_zero_padding(tiny_ckpt):
    enc = ColBERTEncoder(tiny_ckpt, device="cpu", query_augmentation=False, markers=False, mask_punctuation=False)
    Q = enc.encode_queries(QUERIES)
    assert Q.shape == (3, 16, 16)
    for q, text in zip(Q, QUERIES):
        plain = plain_token_vectors(enc, text)
        n = len(plain)
        assert np.allclose(q[:n], plain, atol=1e-5)
        assert not np.any(q[n:])  # padding rows are zero: they add nothing to any MaxSim score
    doc = enc.encode_documents([TEXTS[0]])[0]
    full = enc.tokenizer(TEXTS[0], truncation=True, max_length=enc.settings.doc_maxlen)["input_ids"]
    assert len(doc) == len(full)  # punctuation kept, no marker inserted
    # the colbert-ai defaults differ: the marker replaces a token and [MASK] rows fill the query
    default = ColBERTEncoder(tiny_ckpt, device="cpu").encode_queries(QUERIES)
    assert np.all(np.any(default != 0, axis=2)) and not np.allclose(default[:, :3], Q[:, :3], atol=1e-3)


def test_conventions_come_from_the_checkpoint_and_yield_to_overrides(tmp_path, tiny_ckpt):
    from tests.conftest import make_tiny_bert

    ckpt = convert_checkpoint(
        make_tiny_bert(tmp_path / "bert"), tmp_path / "ck", dim=16, query_augmentation=False, markers=False
    )
    meta = json.loads((ckpt / "artifact.metadata").read_text())
    assert meta["query_augmentation"] is False and meta["markers"] is False and meta["mask_punctuation"] is False
    s = ColBERTEncoder(ckpt, device="cpu").settings
    assert (s.query_augmentation, s.markers) == (False, False)
    s = ColBERTEncoder(ckpt, device="cpu", markers=True).settings
    assert (s.query_augmentation, s.markers) == (False, True)


def test_lone_surrogate_in_a_query_is_refused(tiny_encoder):
    with pytest.raises(InputError, match="query 1 is not valid Unicode: a lone surrogate"):
        tiny_encoder.encode_queries(["fine", "a\ud800b"])


def test_count_truncated_counts_documents_longer_than_doc_maxlen(tiny_encoder):
    # [CLS] + the marker's placeholder + words + [SEP]: 61 words fill doc_maxlen=64 exactly
    assert tiny_encoder.settings.doc_maxlen == 64
    fits, longer = " ".join(["cell"] * 61), " ".join(["cell"] * 62)
    assert tiny_encoder.count_truncated([fits, longer, "short", "", longer * 100]) == 2
    assert [len(e) for e in tiny_encoder.encode_documents([fits, longer])] == [64, 64]  # both cut to doc_maxlen


MEMORY_SCRIPT = """
import json, resource, sys, time
from pooledir.encoder import ColBERTEncoder
enc = ColBERTEncoder(sys.argv[1], device="cpu")
enc.encode_documents(["warm up the model and the tokenizer"])
texts = {
    "words": " ".join(["cancer cells", "vitamin, bone", "unbelievable study"] * 1_200_000)[:20_000_000],
    "no whitespace": "细胞," * 6_700_000,
}
out = {}
for name, text in texts.items():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    vecs = enc.encode_documents([text])[0]
    n = enc.count_truncated([text])
    out[name] = {"mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024,
                 "s": time.perf_counter() - t, "vectors": len(vecs), "truncated": n, "chars": len(text)}
print(json.dumps(out))
"""


def test_tokenizing_a_20mb_document_costs_bounded_memory_and_time(tiny_ckpt):
    """A 20 MB one-line document: before clipping, tokenizing it took 2.7 GB and minutes."""
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, str(tiny_ckpt)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name, r in json.loads(proc.stdout.splitlines()[-1]).items():
        assert r["chars"] >= 20_000_000 * 0.99 or name == "no whitespace"
        assert r["truncated"] == 1 and r["vectors"] > 0, (name, r)
        assert r["mb"] < 100, (name, r)  # peak resident memory it added, beside the 20 MB text itself
        assert r["s"] < 20, (name, r)


def test_onnx_query_backends(tmp_path, monkeypatch, tiny_ckpt, tiny_encoder):
    """fp32 ONNX Runtime gives torch's vectors; INT8 is close but not equal (lossy: opt-in only)."""
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    ref = ColBERTEncoder(tiny_ckpt, device="cpu", query_backend="torch").encode_queries(QUERIES)  # the reference
    fast = ColBERTEncoder(tiny_ckpt, device="cpu", query_backend="onnx").encode_queries(QUERIES)
    assert np.abs(fast - ref).max() <= 1e-4
    int8 = ColBERTEncoder(tiny_ckpt, device="cpu", query_backend="onnx-int8").encode_queries(QUERIES)
    assert int8.shape == ref.shape and np.abs(int8 - ref).max() > 1e-4
    assert np.allclose(np.linalg.norm(int8, axis=2), 1, atol=1e-4)
    with pytest.raises(InputError, match="query_backend='tensorrt' is not one of auto, torch, onnx, onnx-int8"):
        ColBERTEncoder(tiny_ckpt, device="cpu", query_backend="tensorrt")


def test_encoder_for_index_follows_the_manifest_over_the_checkpoint(tiny_ckpt):
    from pooledir.encoder import encoder_for_index, encoder_key
    from pooledir.errors import IndexCorruptError

    recorded = {"doc_maxlen": 40, "query_maxlen": 8, "query_augmentation": False, "markers": False}
    manifest = {"checkpoint": str(tiny_ckpt), "encoder": {"dim": 16, **recorded}}
    s = encoder_for_index(manifest, "cpu").settings
    assert {k: getattr(s, k) for k in recorded} == recorded
    assert s.mask_punctuation is True  # not recorded (an older manifest): the checkpoint's metadata decides
    assert encoder_key(manifest) == encoder_key(manifest, tiny_ckpt.parent / ".." / tiny_ckpt.parent.name / "colbert")
    assert encoder_key(manifest) != encoder_key({**manifest, "encoder": {**manifest["encoder"], "markers": True}})
    with pytest.raises(IndexCorruptError, match="'encoder' settings"):
        encoder_key({"checkpoint": str(tiny_ckpt)})


def test_queries_without_augmentation_are_padded_to_the_longest_only(tiny_ckpt):
    """Same vectors as padding every query to query_maxlen, for a forward pass over the batch's longest query."""
    enc = ColBERTEncoder(tiny_ckpt, device="cpu", query_augmentation=False)
    short = ["cancer cells in mice", "vitamin"]
    widths = []
    forward = enc._query_forward
    enc._query_forward = lambda ids, mask: widths.append(ids.shape[1]) or forward(ids, mask)
    Q = enc.encode_queries(short)
    s = enc.settings
    full = enc._tokenize(short, True, s.query_maxlen, padding="max_length", return_tensors="np")
    ids, mask = full["input_ids"].astype(np.int64), full["attention_mask"].astype(np.int64)
    ref = forward(ids, mask)
    ref[mask == 0] = 0.0
    assert Q.shape == ref.shape == (len(short), s.query_maxlen, enc.dim)
    assert np.abs(Q - ref).max() <= 1e-5
    assert widths == [int(mask.sum(axis=1).max())] and widths[0] < s.query_maxlen
