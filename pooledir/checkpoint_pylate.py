"""ColBERT checkpoints in PyLate's sentence-transformers layout: read the folder, build encoder + projection.

A PyLate folder holds ``modules.json`` (a Transformer module, usually in the root
folder, then one or more Dense modules such as ``1_Dense/``),
``config_sentence_transformers.json`` (query/document prefixes, lengths, query
expansion, skiplist words) and the Transformer's own files (``config.json``,
weights, ``tokenizer.json``). What PyLate 1.6 saves differs from colbert-ai's
layout in ways a loader must mind: the prefixes ("[Q] ", "[D] ", trailing
space included) are tokens added to the vocabulary and *inserted* after
[CLS]; the pad token is [MASK]; the encoder weights have no ``bert.`` prefix;
transformers 5 writes LayerNorm weights as ``gamma``/``beta``, ModernBERT's
rope settings as ``rope_parameters`` and the tokenizer class as
``TokenizersBackend``, none of which transformers 4.57 reads by itself.
"""

from __future__ import annotations

import json
import logging
import string
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from pooledir.checkpoint_settings import ColBERTSettings, LoadedCheckpoint
from pooledir.errors import CheckpointError

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

MODULES_FILE = "modules.json"
#: module types that only re-normalise: pooledir normalises every vector anyway
_NORMALIZE_TYPES = ("Normalize",)


def is_pylate_folder(path: Path) -> bool:
    """True for a sentence-transformers folder (``modules.json``) whose modules include a Dense projection."""
    modules = path / MODULES_FILE
    if not modules.is_file():
        return False
    try:
        types = [m.get("type", "") for m in json.loads(modules.read_text())]
    except (ValueError, AttributeError):
        return True  # let read_modules report the broken file
    return any(t.rsplit(".", 1)[-1] == "Dense" for t in types)


@dataclass(frozen=True)
class PylateModules:
    """The folders ``modules.json`` names: one Transformer, then Dense projections in order."""

    transformer: Path
    dense: tuple[Path, ...]


def read_modules(path: Path) -> PylateModules:
    """Parse ``modules.json``; anything but Transformer → Dense… (→ Normalize) is an error naming the file."""
    file = path / MODULES_FILE
    try:
        entries = sorted(json.loads(file.read_text()), key=lambda m: int(m.get("idx", 0)))
        kinds = [(str(m["type"]), path / str(m.get("path", ""))) for m in entries]
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{file}: not a sentence-transformers module list ({e})") from None
    transformer, dense = None, []
    for i, (kind, folder) in enumerate(kinds):
        name = kind.rsplit(".", 1)[-1]
        if i == 0 and name == "Transformer":
            transformer = folder
        elif i > 0 and name == "Dense":
            dense.append(folder)
        elif i == len(kinds) - 1 and name in _NORMALIZE_TYPES:
            pass
        else:
            raise CheckpointError(
                f"{file}: module {i} has type {kind!r}; a ColBERT checkpoint is one Transformer followed by "
                "Dense modules (a Pooling module means a single-vector model, which pooledir cannot use)"
            )
    if transformer is None or not dense:
        raise CheckpointError(f"{file}: needs a Transformer module first and at least one Dense module")
    return PylateModules(transformer, tuple(dense))


def _activation(name: str, file: Path) -> torch.nn.Module:
    """The torch.nn activation a Dense config names (e.g. ``torch.nn.modules.activation.Tanh``)."""
    cls = getattr(torch.nn, name.rsplit(".", 1)[-1], None) if name.startswith("torch.nn.") else None
    if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
        raise CheckpointError(f"{file}: unknown activation_function {name!r} (expected a torch.nn module)")
    return cls()


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """Read model.safetensors (single or sharded) first, else pytorch_model.bin; raise naming the missing file."""
    from safetensors.torch import load_file

    single = folder / "model.safetensors"
    if single.is_file():
        return load_file(str(single))
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return {k: v for shard in shards for k, v in load_file(str(folder / shard)).items()}
    bin_ = folder / "pytorch_model.bin"
    if bin_.is_file():
        state: dict[str, torch.Tensor] = torch.load(bin_, map_location="cpu", weights_only=True)
        return state
    raise CheckpointError(f"{single} is missing (no weights in {folder}: model.safetensors or pytorch_model.bin)")


class DenseModule(torch.nn.Module):
    """PyLate's Dense forward: ``activation(linear(x))``, plus ``residual(x)`` (or ``x``) with ``use_residual``."""

    def __init__(self, n_in: int, n_out: int, bias: bool, activation: torch.nn.Module, use_residual: bool) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(n_in, n_out, bias=bias)
        self.activation_function = activation
        self.use_residual = use_residual
        if use_residual and n_in != n_out:
            self.residual = torch.nn.Linear(n_in, n_out, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Project token vectors (..., in) to (..., out)."""
        out: torch.Tensor = self.activation_function(self.linear(x))  # a Module's __call__ is untyped
        if self.use_residual:
            out = out + (self.residual(x) if hasattr(self, "residual") else x)
        return out

    @classmethod
    def load(cls, folder: Path, in_features: int) -> DenseModule:
        """Build one Dense folder's module, its config and weight shapes checked against ``in_features``."""
        file = folder / "config.json"
        if not file.is_file():
            raise CheckpointError(f"{file} is missing (every Dense module has one)")
        cfg = json.loads(file.read_text())
        n_in, n_out = int(cfg["in_features"]), int(cfg["out_features"])
        if n_in != in_features:
            raise CheckpointError(
                f"{file}: in_features={n_in} but the module before it outputs {in_features} dimensions"
            )
        state = _read_weights(folder)
        weight = state.get("linear.weight")
        if weight is None or tuple(weight.shape) != (n_out, n_in):
            shape = None if weight is None else tuple(weight.shape)
            raise CheckpointError(f"{folder}: linear.weight has shape {shape}, config.json says ({n_out}, {n_in})")
        bias = bool(cfg.get("bias", True))
        if bias and "linear.bias" not in state:
            raise CheckpointError(f"{folder}: config.json says bias=true but the weights have no linear.bias")
        activation = _activation(cfg.get("activation_function", "torch.nn.Identity"), file)
        module = cls(n_in, n_out, bias, activation, bool(cfg.get("use_residual", False)))
        try:
            module.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
        except RuntimeError as e:
            raise CheckpointError(f"{folder}: weights do not fit config.json ({str(e).splitlines()[0]})") from None
        return module.eval()


def _fix_config(config: PretrainedConfig) -> None:
    """Translate what transformers 5 writes into what 4.57 reads (ModernBERT's rope thetas)."""
    rope = getattr(config, "rope_parameters", None)
    if config.model_type == "modernbert" and isinstance(rope, dict):
        if "full_attention" in rope:
            config.global_rope_theta = float(rope["full_attention"]["rope_theta"])
        if "sliding_attention" in rope:
            config.local_rope_theta = float(rope["sliding_attention"]["rope_theta"])


def _encoder_weights(state: dict[str, torch.Tensor], folder: Path) -> dict[str, torch.Tensor]:
    """Strip a task prefix (``bert.``, ``model.``), drop a colbert-ai ``linear.weight``, rename gamma/beta."""
    state = {k: v for k, v in state.items() if k != "linear.weight"}
    tops = {k.split(".", 1)[0] for k in state}
    if "embeddings" not in tops:
        prefix = next((p for p in tops if any(k.startswith(p + ".embeddings.") for k in state)), None)
        if prefix is None:
            raise CheckpointError(f"{folder}: could not find the encoder weights (no 'embeddings.*' keys)")
        state = {k[len(prefix) + 1 :]: v for k, v in state.items() if k.startswith(prefix + ".")}
    renames = {".gamma": ".weight", ".beta": ".bias"}
    out = {}
    for k, v in state.items():
        for old, new in renames.items():
            if k.endswith(old):
                k = k[: -len(old)] + new
        out[k] = v.float()
    return out


def load_transformer(folder: Path) -> PreTrainedModel:
    """The Transformer module's AutoModel (float32, eval mode) from its folder."""
    from transformers import AutoConfig, AutoModel

    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{folder / 'config.json'} is missing (the Transformer module's config)")
    config = AutoConfig.from_pretrained(folder)
    _fix_config(config)
    model = AutoModel.from_config(config)
    state = _encoder_weights(_read_weights(folder), folder)
    missing, unexpected = model.load_state_dict(state, strict=False)
    optional = ("pooler.", "embeddings.position_ids", "embeddings.token_type_ids")
    missing = [k for k in missing if not k.startswith(optional)]
    if missing:
        raise CheckpointError(f"{folder}: weights missing for {missing[:5]} ({len(missing)} in all)")
    if unexpected:
        log.debug("ignoring unexpected weights %s", unexpected[:5])
    loaded: PreTrainedModel = model.float().eval()
    return loaded


def load_tokenizer(folder: Path) -> PreTrainedTokenizerBase:
    """The tokenizer, with [MASK] as pad token as PyLate sets it (else EOS, else the tokenizer's own pad)."""
    import transformers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    cfg_file = folder / "tokenizer_config.json"
    cfg = json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}
    cls = str(cfg.get("tokenizer_class") or "")
    known = hasattr(transformers, cls) or hasattr(transformers, cls + "Fast")
    if (folder / "tokenizer.json").is_file() and not known:
        # transformers 5 writes tokenizer_class "TokenizersBackend", unknown to 4.57: read tokenizer.json itself
        specials = {k: v for k, v in cfg.items() if k.endswith("_token") and isinstance(v, str)}
        tok = PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"), **specials)
    else:
        tok = AutoTokenizer.from_pretrained(folder)
    if tok.mask_token_id is not None:
        tok.pad_token = tok.mask_token
    elif tok.eos_token_id is not None:
        tok.pad_token = tok.eos_token
    elif tok.pad_token_id is None:
        raise CheckpointError(f"{folder}: the tokenizer has no [MASK], EOS or pad token to pad queries with")
    return tok


def read_settings(path: Path, transformer: Path, dim: int) -> ColBERTSettings:
    """ColBERTSettings from ``config_sentence_transformers.json`` with PyLate's defaults for missing keys."""
    file = path / "config_sentence_transformers.json"
    cfg = json.loads(file.read_text()) if file.is_file() else {}
    st_file = transformer / "sentence_bert_config.json"
    st_cfg = json.loads(st_file.read_text()) if st_file.is_file() else {}
    q_prefix = cfg.get("query_prefix")
    d_prefix = cfg.get("document_prefix")
    q_prefix = "[Q] " if q_prefix is None else q_prefix
    d_prefix = "[D] " if d_prefix is None else d_prefix
    if (q_prefix == "") != (d_prefix == ""):
        raise CheckpointError(f"{file}: a query prefix without a document prefix (or the reverse) is not supported")
    expansion = bool(cfg.get("do_query_expansion", True))
    skip = cfg.get("skiplist_words")
    return ColBERTSettings(
        layout="pylate",
        dim=dim,
        doc_maxlen=int(cfg.get("document_length") or 180),
        query_maxlen=int(cfg.get("query_length") or 32),
        mask_punctuation=True,
        skiplist_words=tuple(string.punctuation if skip is None else skip),
        attend_to_mask_tokens=expansion and bool(cfg.get("attend_to_expansion_tokens", False)),
        query_token_id=q_prefix or "[Q] ",
        doc_token_id=d_prefix or "[D] ",
        query_augmentation=expansion,
        markers=q_prefix != "",
        do_lower_case=bool(st_cfg.get("do_lower_case", False)),
    )


def load_pylate(path: Path) -> LoadedCheckpoint:
    """A LoadedCheckpoint (encoder, projection, tokenizer, settings) from a PyLate folder."""
    modules = read_modules(path)
    model = load_transformer(modules.transformer)
    width = int(model.config.hidden_size)
    layers = []
    for folder in modules.dense:
        layers.append(DenseModule.load(folder, width))
        width = layers[-1].linear.out_features
    tokenizer = load_tokenizer(modules.transformer)
    settings = read_settings(path, modules.transformer, dim=width)
    vocab = model.get_input_embeddings().num_embeddings
    for prefix in {settings.query_token_id, settings.doc_token_id} if settings.markers else ():
        token_id = tokenizer.convert_tokens_to_ids(prefix)
        if token_id is None or token_id == tokenizer.unk_token_id or token_id >= vocab:
            raise CheckpointError(
                f"{modules.transformer / 'tokenizer.json'}: prefix {prefix!r} is not a token of the vocabulary "
                f"(PyLate adds its prefixes as tokens; the embedding matrix has {vocab} rows)"
            )
    return LoadedCheckpoint(model, torch.nn.Sequential(*layers), tokenizer, settings)
