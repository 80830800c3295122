"""Encode text into ColBERT token vectors, following colbert-ai's conventions.

The conventions are colbert-ai 0.2.x's (tested equal to its ``Checkpoint``):
a ``[Q]``/``[D]`` marker after ``[CLS]``, queries padded to ``query_maxlen``
with ``[MASK]`` (not attended to, but their vectors kept), punctuation
dropped from documents, L2-normalised vectors. Unlike colbert-ai, documents
are sorted by length and padded per batch, so short documents cost little.

A checkpoint (or the caller) can switch markers, query augmentation and
punctuation masking off; without augmentation a query's padding rows are
zero vectors, which add nothing to any MaxSim score and search skips.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pooledir.checkpoint import (
    ColBERTSettings,
    load_state_dict,
    punctuation_ids,
    resolve_checkpoint,
    split_colbert_weights,
)
from pooledir.corpus import check_utf8
from pooledir.device import resolve_device
from pooledir.errors import CheckpointError, IndexCorruptError, InputError
from pooledir.index.manifest import ENCODER_SETTINGS, Manifest

log = logging.getLogger(__name__)

#: weight keys that may be absent from a checkpoint without changing the token outputs
_OPTIONAL_KEYS = ("pooler.", "embeddings.position_ids", "embeddings.token_type_ids")


class ColBERTEncoder:
    """A ColBERT checkpoint ready to encode queries and documents.

    Parameters
    ----------
    checkpoint
        A local checkpoint folder or a Hugging Face hub id.
    device
        ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda[:N]"``.
    batch_size
        Texts per forward pass.
    doc_maxlen, query_maxlen
        Override the checkpoint's lengths (in tokens, markers included).
    query_augmentation, markers, mask_punctuation
        Override the checkpoint's conventions (None: as its ``artifact.metadata`` says).
    """

    def __init__(
        self,
        checkpoint: str | os.PathLike[str],
        device: str = "auto",
        batch_size: int = 32,
        doc_maxlen: int | None = None,
        query_maxlen: int | None = None,
        query_augmentation: bool | None = None,
        markers: bool | None = None,
        mask_punctuation: bool | None = None,
    ) -> None:
        import torch
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        if batch_size <= 0:
            raise InputError(f"batch_size={batch_size} must be positive")
        self.path: Path = resolve_checkpoint(checkpoint)
        self.checkpoint = str(checkpoint)
        self.device = resolve_device(device)
        self.batch_size = batch_size

        encoder_state, linear = split_colbert_weights(load_state_dict(self.path))
        settings = ColBERTSettings.from_metadata(self.path, dim=int(linear.shape[0]))
        overrides = {
            k: v
            for k, v in (
                ("doc_maxlen", doc_maxlen),
                ("query_maxlen", query_maxlen),
                ("query_augmentation", query_augmentation),
                ("markers", markers),
                ("mask_punctuation", mask_punctuation),
            )
            if v is not None
        }
        self.settings = ColBERTSettings(**{**settings.__dict__, **overrides})

        config = AutoConfig.from_pretrained(self.path)
        self.model = AutoModel.from_config(config)
        missing, unexpected = self.model.load_state_dict(encoder_state, strict=False)
        missing = [k for k in missing if not k.startswith(_OPTIONAL_KEYS)]
        if missing:
            raise CheckpointError(f"{self.path}: weights missing for {missing[:5]} ({len(missing)} in all)")
        if unexpected:
            log.debug("ignoring unexpected weights %s", unexpected[:5])
        self.linear = torch.nn.Linear(linear.shape[1], linear.shape[0], bias=False)
        self.linear.weight.data.copy_(linear.float())
        self.model.eval().to(self.device)
        self.linear.eval().to(self.device)

        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        # HF fast tokenizers fail ("Already borrowed") when threads change truncation/padding concurrently
        self._tokenizer_lock = threading.Lock()
        tok = self.tokenizer
        self.q_marker = tok.convert_tokens_to_ids(self.settings.query_token_id)
        self.d_marker = tok.convert_tokens_to_ids(self.settings.doc_token_id)
        skip = punctuation_ids(tok) if self.settings.mask_punctuation else set()
        self._skip_ids = np.array(sorted(skip | {tok.pad_token_id}), dtype=np.int64)

    @property
    def dim(self) -> int:
        """Dimension of the output vectors."""
        return self.settings.dim

    def _forward(self, ids: np.ndarray, mask: np.ndarray):
        """Run encoder + projection + L2 norm on one padded batch; returns a float32 tensor (B, L, dim)."""
        import torch

        ids_t = torch.from_numpy(ids).to(self.device)
        mask_t = torch.from_numpy(mask).to(self.device)
        with torch.inference_mode(), torch.autocast("cuda", enabled=self.device.startswith("cuda")):
            hidden = self.model(input_ids=ids_t, attention_mask=mask_t)[0]
            out = self.linear(hidden)
        return torch.nn.functional.normalize(out.float(), p=2, dim=2)

    def _tokenize(self, texts: list[str], **kwargs) -> dict:
        """Tokenize with room for the marker: colbert-ai's ". " placeholder, overwritten after [CLS]."""
        prefix = ". " if self.settings.markers else ""
        with self._tokenizer_lock:
            return self.tokenizer([prefix + t for t in texts], truncation=True, **kwargs)

    def encode_queries(self, queries: Sequence[str]) -> np.ndarray:
        """Encode queries into an array of shape (n, query_maxlen, dim), float32.

        With query augmentation every position is kept, [MASK] padding included
        (colbert-ai); without it the padding rows are zero vectors.
        """
        queries = check_texts(queries, "query")
        tok, s = self.tokenizer, self.settings
        enc = self._tokenize(queries, padding="max_length", max_length=s.query_maxlen, return_tensors="np")
        ids, mask = enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)
        if s.markers:
            ids[:, 1] = self.q_marker
        if s.query_augmentation:
            ids[ids == tok.pad_token_id] = tok.mask_token_id
            if s.attend_to_mask_tokens:
                mask[ids == tok.mask_token_id] = 1
        out = np.concatenate(
            [
                self._forward(ids[b : b + self.batch_size], mask[b : b + self.batch_size]).cpu().numpy()
                for b in range(0, len(queries), self.batch_size)
            ]
        )
        if not s.query_augmentation:
            out[mask == 0] = 0.0
        return out

    def encode_documents(self, documents: Sequence[str], show_progress: bool = False) -> list[np.ndarray]:
        """Encode documents into one float16 array (n_tokens, dim) per document, in input order.

        Documents are sorted by token count and padded per batch; punctuation and padding are dropped.
        """
        import torch
        from tqdm.auto import tqdm

        documents = check_texts(documents, "document", allow_empty=True)
        tok = self.tokenizer
        ids_list = self._tokenize(documents, max_length=self.settings.doc_maxlen)["input_ids"]
        lengths = np.fromiter((len(x) for x in ids_list), dtype=np.int64, count=len(ids_list))
        order = np.argsort(-lengths, kind="stable")
        out: list[np.ndarray | None] = [None] * len(documents)
        bar = tqdm(total=len(documents), desc="encode", unit="doc", disable=not show_progress)
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            width = int(lengths[batch[0]])
            ids = np.full((len(batch), width), tok.pad_token_id, dtype=np.int64)
            for row, i in enumerate(batch):
                ids[row, : lengths[i]] = ids_list[i]
            if self.settings.markers:
                ids[:, 1] = self.d_marker
            mask = (np.arange(width)[None, :] < lengths[batch][:, None]).astype(np.int64)
            vecs = self._forward(ids, mask).to(torch.float16).cpu().numpy()
            keep = ~np.isin(ids, self._skip_ids) & mask.astype(bool)
            for row, i in enumerate(batch):
                out[i] = vecs[row][keep[row]]
            bar.update(len(batch))
        bar.close()
        return out  # type: ignore[return-value]


def _recorded(manifest: Manifest | Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """(checkpoint, recorded encoder settings) of a manifest; settings older manifests lack are None."""
    try:
        checkpoint, enc = manifest["checkpoint"], manifest["encoder"]
    except (KeyError, TypeError):
        checkpoint, enc = None, None
    if not isinstance(enc, dict) or not checkpoint:
        raise IndexCorruptError("the index manifest lacks its 'encoder' settings or its 'checkpoint'")
    return str(checkpoint), {k: enc.get(k) for k in ENCODER_SETTINGS}


def encoder_key(manifest: Manifest | Mapping[str, Any], checkpoint: str | os.PathLike[str] | None = None) -> tuple:
    """What makes two indexes' encoders interchangeable: the same weights and the same recorded settings.

    Indexes with equal keys can share one :func:`encoder_for_index` result.
    """
    recorded_checkpoint, settings = _recorded(manifest)
    source = str(checkpoint or recorded_checkpoint)
    path = Path(source).expanduser()
    return (str(path.resolve()) if path.exists() else source, *sorted(settings.items()))


def encoder_for_index(
    manifest: Manifest | Mapping[str, Any],
    device: str = "auto",
    checkpoint: str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> ColBERTEncoder:
    """The encoder that encodes queries and documents the way an index's documents were encoded.

    The index's recorded settings (lengths, query augmentation, markers,
    punctuation masking) win over the checkpoint's own metadata, so pointing
    ``checkpoint`` at another copy of the weights (e.g. a container mount)
    changes where they are read from, never how text is encoded.

    Parameters
    ----------
    manifest
        The index's manifest (:func:`pooledir.read_manifest`, or its JSON as a dict).
    device
        As for :class:`ColBERTEncoder`.
    checkpoint
        Load the weights from here instead of the manifest's checkpoint path.
    **kwargs
        Passed on to :class:`ColBERTEncoder` (e.g. ``batch_size``).
    """
    recorded_checkpoint, settings = _recorded(manifest)
    return ColBERTEncoder(checkpoint or recorded_checkpoint, device=device, **(kwargs | settings))


def check_texts(texts: Sequence[str], what: str, allow_empty: bool = False) -> list[str]:
    """Return ``texts`` as a list of strings, or raise InputError naming the first bad one."""
    if isinstance(texts, str):
        raise InputError(f"expected a list of {what} texts, got a single string")
    texts = list(texts)
    for i, t in enumerate(texts):
        check_utf8(t, f"{what} {i}")
        if not allow_empty and not t.strip():
            raise InputError(f"{what} {i} is empty")
    return texts
