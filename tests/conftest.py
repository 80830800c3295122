from __future__ import annotations

import json
import os
import signal
import string
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings

# Hypothesis draws the same examples on every run (a clean clone's CI has no example database, so random draws
# would make a rare failure a red CI at random); POOLEDIR_HYPOTHESIS_EXPLORE=1 draws new ones to hunt for bugs.
settings.register_profile("pooledir", derandomize=os.environ.get("POOLEDIR_HYPOTHESIS_EXPLORE") != "1")
settings.load_profile("pooledir")


def pytest_configure(config: pytest.Config) -> None:
    """Give the suite Ctrl-C back when it was started with SIGINT ignored.

    A non-interactive shell starts a background job (``make test &``, some CI runners) with SIGINT ignored,
    every child inherits that, and Python keeps an inherited SIG_IGN: the Ctrl-C tests' builds would then
    never see their SIGINT and would run to the end. A handler here is reset to the default in each child
    at exec, so the builds the tests start answer SIGINT as a user's terminal would.
    """
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# the shared data beside the checkout; POOLEDIR_BEIR_DIR points elsewhere (e.g. from a git worktree)
BEIR = Path(
    os.environ.get("POOLEDIR_BEIR_DIR", Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "beir")
)

WORDS = (
    "the a of and to in is for on with as by at from that this are be was it an or which cell cells protein "
    "gene genes cancer tumor blood patients study results effect effects risk disease treatment clinical "
    "human mice expression increased reduced level levels brain heart vitamin bone t immune virus "
    "infection dna rna micro regulate growth pooling token vector search retrieval index query document"
).split()


class FakeEncoder:
    """Just what an index records of an encoder, for tests that give vectors directly (no model)."""

    path = "."

    def __init__(self, dim: int = 16):
        from types import SimpleNamespace

        self.dim = dim
        self.settings = SimpleNamespace(
            layout="colbert-ai",
            doc_maxlen=300,
            query_maxlen=32,
            query_augmentation=False,
            markers=False,
            mask_punctuation=False,
        )


def make_tiny_bert(path: Path, hidden: int = 32, seed: int = 0) -> Path:
    """A random 2-layer BERT with a small word-level vocabulary, saved like a HF encoder folder."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    specials = ["[PAD]", "[unused0]", "[unused1]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    letters = list(string.ascii_lowercase) + ["##" + c for c in string.ascii_lowercase]
    vocab = specials + list(string.punctuation) + list(string.digits) + letters + WORDS
    (path / "vocab.txt").write_text("\n".join(dict.fromkeys(vocab)) + "\n")
    tok = BertTokenizerFast(vocab_file=str(path / "vocab.txt"), do_lower_case=True)
    tok.save_pretrained(path)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(dict.fromkeys(vocab)),
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
    )
    BertModel(config).save_pretrained(path)
    return path


@pytest.fixture(scope="session", autouse=True)
def _user_cache(tmp_path_factory):
    """The user cache (ONNX graphs the default query backend exports) is a session folder, never ~/.cache."""
    before = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))
    yield
    if before is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = before


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    """A ColBERT checkpoint (dim 16) around a tiny random BERT."""
    from pooledir.checkpoint import convert_checkpoint

    root = tmp_path_factory.mktemp("tiny")
    bert = make_tiny_bert(root / "bert")
    # colbert-ai's conventions on, so that its Checkpoint is a reference for our encoder
    return convert_checkpoint(
        bert,
        root / "colbert",
        dim=16,
        doc_maxlen=64,
        query_maxlen=16,
        query_augmentation=True,
        markers=True,
        mask_punctuation=True,
    )


@pytest.fixture(scope="session")
def tiny_encoder(tiny_ckpt):
    from pooledir.encoder import ColBERTEncoder

    return ColBERTEncoder(tiny_ckpt, device="cpu", batch_size=8)


def random_text(rng: np.random.Generator, n_words: int) -> str:
    words = rng.choice(WORDS, size=n_words)
    return " ".join(words) + rng.choice([".", "!", "?", ", yes."])


@pytest.fixture(scope="session")
def tiny_docs():
    from pooledir.corpus import Document

    rng = np.random.default_rng(1)
    return [Document(f"d{i}", random_text(rng, int(rng.integers(3, 40))), {"n": i}) for i in range(120)]


@pytest.fixture(scope="session")
def minilm_ckpt(tmp_path_factory) -> Path:
    from pooledir.checkpoint import convert_checkpoint, minilm_path

    return convert_checkpoint(minilm_path(), tmp_path_factory.mktemp("minilm") / "ckpt", dim=128, doc_maxlen=300)


@pytest.fixture()
def tiny_beir(tmp_path) -> Path:
    """A small BEIR-format dataset folder."""
    root = tmp_path / "beir"
    (root / "qrels").mkdir(parents=True)
    rng = np.random.default_rng(2)
    with open(root / "corpus.jsonl", "w") as f:
        for i in range(40):
            f.write(json.dumps({"_id": f"c{i}", "title": f"title {i}", "text": random_text(rng, 12)}) + "\n")
    with open(root / "queries.jsonl", "w") as f:
        for i in range(5):
            f.write(json.dumps({"_id": f"q{i}", "text": random_text(rng, 4)}) + "\n")
    (root / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\tc{i}\t1\nq{i}\tc{i + 10}\t2\n" for i in range(5))
    )
    return root
