"""Build the PyLate test fixtures: tiny random checkpoints saved by PyLate and PyLate's own encodings.

    python eval/make_pylate_fixtures.py [--venv /tmp/pylate-venv] [--out tests/fixtures/pylate]

Run once by hand (``make pylate-fixtures``), never in CI: PyLate 1.6 needs transformers 5
while pooledir pins 4.57, so the script makes a separate virtual environment, installs PyLate
there and re-runs itself inside it. pylate is installed without its dependencies because its
index backends (fast-plaid, fastkmeans) pin another torch, whose wheels pull several GB of CUDA
libraries; ``pylate.models`` needs none of them.

Two checkpoints, each a 2-layer encoder with hidden size 32 and a vocabulary of a few hundred
tokens, so the committed files stay small:

- ``bert``: a BertModel with a word-piece vocabulary, one Dense 32→16 without bias (as
  answerai-colbert-small-v1 and colbertv2.0 ported to PyLate).
- ``modernbert``: a ModernBertModel with a byte-level BPE vocabulary (as GTE-ModernColBERT-v1),
  two Dense modules: 32→24 with bias and Tanh, then 24→16 without bias.

For each, ``<name>.<variant>.npz`` beside the checkpoint folder holds PyLate's ``encode`` of the texts in ``texts.json``
(queries with ``is_query=True``, documents with ``is_query=False``) with the checkpoint's own
settings (``default``) and with one convention changed at load time (``no_expansion``,
``attend_expansion``, ``no_skiplist``, ``no_prefix``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import string
import subprocess
import sys
from pathlib import Path

PINS = ["sentence-transformers==5.3.0", "transformers==5.3.0", "scipy", "ujson", "datasets>=2.20", "pandas"]

QUERIES = [
    "does vitamin d reduce the risk of heart disease?",
    "Cancer",
    "immune response of T cells to virus infection in humans, and in mice",
]
DOCUMENTS = [
    "The tumor cells, in mice, showed increased expression!",
    "a b c",
    "Vitamin D and bone density: a study of patients with heart disease; results? reduced risk.",
    "gene expression in brain cells " * 12,  # longer than document_length: truncated
    "  DNA  ",
]

#: PyLate load-time overrides for each reference variant
VARIANTS = {
    "default": {},
    "no_expansion": {"do_query_expansion": False},
    "attend_expansion": {"attend_to_expansion_tokens": True},
    "no_skiplist": {"skiplist_words": []},
    "no_prefix": {"query_prefix": "", "document_prefix": ""},
}

WORDS = (
    "the a of and to in is for on with as by at from that this are be was it an or which cell cells protein "
    "gene genes cancer tumor blood patients study results effect effects risk disease treatment clinical "
    "human humans mice expression increased reduced level levels brain heart vitamin bone t immune virus "
    "infection dna rna density does response showed"
).split()


def ensure_venv(venv: Path) -> None:
    """Create ``venv`` with PyLate and re-run this script there (unless already inside it)."""
    try:
        import pylate  # noqa: F401

        return
    except ImportError:
        pass
    py = venv / "bin" / "python"
    if not py.exists():
        subprocess.check_call([sys.executable, "-m", "venv", str(venv)])
        pip = [str(py), "-m", "pip", "install", "-q"]
        subprocess.check_call([*pip, "torch==2.13.0"])  # the local CPU wheel, not the CUDA build
        subprocess.check_call([*pip, "--no-deps", "pylate==1.6.0"])
        subprocess.check_call([*pip, *PINS])
    os.execv(str(py), [str(py), *sys.argv])


def bert_base(path: Path) -> Path:
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    specials = ["[PAD]", "[unused0]", "[unused1]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    letters = list(string.ascii_lowercase) + ["##" + c for c in string.ascii_lowercase]
    vocab = list(dict.fromkeys(specials + list(string.punctuation) + list(string.digits) + letters + WORDS))
    # transformers 5's BertTokenizer takes the vocabulary as a dict (a vocab_file argument is ignored)
    BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True).save_pretrained(path)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(path)
    return path


def modernbert_base(path: Path) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import ModernBertConfig, ModernBertModel, PreTrainedTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    specials = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [" ".join(WORDS), *QUERIES, *DOCUMENTS, string.punctuation]
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(corpus * 5, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        mask_token="[MASK]",
        model_max_length=128,
    )
    fast.save_pretrained(path)
    torch.manual_seed(1)
    config = ModernBertConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        local_attention=16,  # shorter than the longest document: the sliding window matters
        global_attn_every_n_layers=2,
        pad_token_id=tok.token_to_id("[PAD]"),
        cls_token_id=tok.token_to_id("[CLS]"),
        sep_token_id=tok.token_to_id("[SEP]"),
        bos_token_id=tok.token_to_id("[CLS]"),
        eos_token_id=tok.token_to_id("[SEP]"),
    )
    ModernBertModel(config).save_pretrained(path)
    return path


def colbert_from(base: Path, modernbert: bool):
    import torch
    from pylate import models
    from sentence_transformers.models import Transformer

    lengths = {"query_length": 12, "document_length": 24}
    if not modernbert:
        return models.ColBERT(str(base), embedding_size=16, device="cpu", **lengths)
    torch.manual_seed(2)
    modules = [
        Transformer(str(base)),
        models.Dense(32, 24, bias=True, activation_function=torch.nn.Tanh()),
        models.Dense(24, 16, bias=False),
    ]
    return models.ColBERT(modules=modules, device="cpu", **lengths)


def reference(model_dir: Path, overrides: dict) -> dict:
    import numpy as np
    from pylate import models

    model = models.ColBERT(str(model_dir), device="cpu", **overrides)
    out = {}
    for what, texts, is_query in (("queries", QUERIES, True), ("documents", DOCUMENTS, False)):
        vecs = model.encode(texts, is_query=is_query, batch_size=2, convert_to_numpy=True)
        out[f"{what}_lengths"] = np.array([len(v) for v in vecs])
        out[what] = np.concatenate(vecs).astype(np.float32)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--venv", type=Path, default=Path("/tmp/pylate-venv"))
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "tests/fixtures/pylate")
    args = p.parse_args()
    ensure_venv(args.venv)

    import numpy as np
    import pylate
    import sentence_transformers
    import torch
    import transformers

    out = args.out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    work = out / ".base"
    (out / "texts.json").write_text(json.dumps({"queries": QUERIES, "documents": DOCUMENTS}, indent=1) + "\n")
    versions = {
        "pylate": pylate.__version__,
        "sentence_transformers": sentence_transformers.__version__,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
    }
    (out / "VERSIONS.json").write_text(json.dumps(versions, indent=1) + "\n")
    for name, make_base in (("bert", bert_base), ("modernbert", modernbert_base)):
        base = make_base(work / name)
        model = colbert_from(base, modernbert=name == "modernbert")
        model.save(str(out / name), create_model_card=False)
        for variant, overrides in VARIANTS.items():
            np.savez(out / f"{name}.{variant}.npz", **reference(out / name, overrides))
    shutil.rmtree(work)
    for f in sorted(out.rglob("*")):
        if f.is_file():
            print(f"{f.stat().st_size:>9}  {f.relative_to(out)}")


if __name__ == "__main__":
    main()
