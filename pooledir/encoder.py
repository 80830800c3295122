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
from typing import TYPE_CHECKING, Any

import numpy as np

from pooledir.checkpoint import load_checkpoint, punctuation_ids, resolve_checkpoint
from pooledir.checkpoint_settings import ColBERTSettings
from pooledir.corpus import check_utf8
from pooledir.device import resolve_device
from pooledir.errors import CheckpointError, IndexCorruptError, InputError
from pooledir.index.manifest import EncoderRecord, Manifest

if TYPE_CHECKING:
    import torch

    from pooledir.runtime_onnx import OnnxRuntimeEncoder

log = logging.getLogger(__name__)


#: how queries can be encoded: auto (the default: onnx where ONNX Runtime is installed and the device is the CPU,
#: else torch), torch, ONNX Runtime fp32 (lossless), ONNX Runtime INT8 (lossy, opt-in)
QUERY_BACKENDS = ("auto", "torch", "onnx", "onnx-int8")
#: measured (eval/results/query_backend/): on 2 CPU cores the fp32 ONNX graph encodes a query in well under
#: torch's time with the same vectors within 1e-4, so it is what "auto" picks where it can run
DEFAULT_QUERY_BACKEND = "auto"
#: how documents can be encoded: lossless runtimes only (an index stores what they produce)
DOCUMENT_BACKENDS = ("torch", "onnx")


def check_backends(query_backend: str = DEFAULT_QUERY_BACKEND, document_backend: str = "torch") -> None:
    """Raise InputError for an unknown backend, or for an ONNX one when ONNX Runtime is not installed.

    Cheap (loads nothing), so callers check a user's choice before any model or file is touched.
    """
    import importlib.util

    if query_backend not in QUERY_BACKENDS:
        raise InputError(f"query_backend={query_backend!r} is not one of {', '.join(QUERY_BACKENDS)}")
    if document_backend not in DOCUMENT_BACKENDS:
        raise InputError(
            f"document_backend={document_backend!r} is not one of {', '.join(DOCUMENT_BACKENDS)} (lossless only)"
        )
    for what, backend in (("query_backend", query_backend), ("document_backend", document_backend)):
        if backend not in ("torch", "auto") and importlib.util.find_spec("onnxruntime") is None:
            raise InputError(
                f"{what}={backend!r} needs ONNX Runtime, which is not installed: pip install 'pooledir[onnx]' "
                "(or use the 'torch' backend)"
            )


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
        Override the checkpoint's conventions (None: as its ``artifact.metadata`` or
        ``config_sentence_transformers.json`` says).
    layout
        The layout an index's vectors were made with (``"colbert-ai"`` or ``"pylate"``);
        a checkpoint of another layout is refused.
    query_backend
        ``"auto"`` (default: ``"onnx"`` on the CPU where ONNX Runtime is installed and the graph
        exports, else ``"torch"``, silently), ``"torch"``, ``"onnx"`` (ONNX Runtime, same vectors
        within 1e-4, about half the CPU time per query; needs ``pooledir[onnx]``) or ``"onnx-int8"``
        (INT8 weights: faster, lossy). ``query_backend`` says which one runs once a query was encoded.
    document_backend
        ``"torch"`` (default) or ``"onnx"`` (fp32, same vectors); never a lossy one.
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
        layout: str | None = None,
        query_backend: str = DEFAULT_QUERY_BACKEND,
        document_backend: str = "torch",
    ) -> None:
        if batch_size <= 0:
            raise InputError(f"batch_size={batch_size} must be positive")
        check_backends(query_backend, document_backend)
        self.path: Path = resolve_checkpoint(checkpoint)
        self.checkpoint = str(checkpoint)
        self.device = resolve_device(device)
        self.batch_size = batch_size

        loaded = load_checkpoint(self.path)
        if layout is not None and layout != loaded.settings.layout:
            raise CheckpointError(
                f"{self.path} is a {loaded.settings.layout} checkpoint but the vectors were made with a {layout} one"
            )
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
        self.settings = ColBERTSettings(**{**loaded.settings.__dict__, **overrides})
        self.model = loaded.model.eval().to(self.device)
        self.linear = loaded.projection.eval().to(self.device)  # the projection to ``dim`` (Dense modules)
        self.tokenizer = loaded.tokenizer
        # texts are clipped to doc_maxlen here (and counted): transformers' "Token indices sequence length is
        # longer than the specified maximum" warning would only alarm users; its own once-per-tokenizer flag
        # silences it for this tokenizer, without touching transformers' logging
        warned = getattr(self.tokenizer, "deprecation_warnings", None)
        if isinstance(warned, dict):
            warned["sequence-length-is-longer-than-the-specified-maximum"] = True
        # HF fast tokenizers fail ("Already borrowed") when threads change truncation/padding concurrently
        self._tokenizer_lock = threading.Lock()
        tok = self.tokenizer
        self.q_marker = tok.convert_tokens_to_ids(self.settings.query_token_id)
        self.d_marker = tok.convert_tokens_to_ids(self.settings.doc_token_id)
        self._skip_ids = np.array(sorted(self._skip_token_ids()), dtype=np.int64)
        self.query_backend, self.document_backend = query_backend, document_backend
        self._runtimes: dict[str, OnnxRuntimeEncoder] = {}
        self._runtime_lock = threading.Lock()
        self._query_runtime = None if query_backend == "auto" else self._runtime(query_backend)
        self._document_runtime = self._runtime(document_backend)

    def _runtime(self, backend: str) -> OnnxRuntimeEncoder | None:
        """The ONNX Runtime session for ``backend`` (one per kind, shared by queries and documents), or None."""
        if backend == "torch":
            return None
        if self.device != "cpu":
            raise InputError(f"backend {backend!r} runs on the CPU; use device='cpu' or the 'torch' backend")
        if backend not in self._runtimes:
            import torch

            from pooledir.runtime_onnx import OnnxRuntimeEncoder

            quantize = backend == "onnx-int8"
            # as many threads as torch uses (OMP_NUM_THREADS, torch.set_num_threads): one knob for both runtimes
            self._runtimes[backend] = OnnxRuntimeEncoder(
                self.path, self.model, self.linear, quantize=quantize, threads=torch.get_num_threads()
            )
        return self._runtimes[backend]

    def _auto_query_runtime(self) -> OnnxRuntimeEncoder | None:
        """Resolve ``"auto"`` on first use: the ONNX fp32 session where it can run, else torch (None), no error.

        On first use, not in __init__: an encoder that only encodes documents never exports the query graph.
        """
        import importlib.util

        with self._runtime_lock:
            if self.query_backend != "auto":
                return self._query_runtime
            runtime = None
            if self.device == "cpu" and importlib.util.find_spec("onnxruntime") is not None:
                try:
                    runtime = self._runtime("onnx")
                except Exception as e:  # any export or session failure: torch computes the same vectors
                    log.warning("query_backend='auto': ONNX Runtime unusable here (%s); encoding queries with torch", e)
            self._query_runtime, self.query_backend = runtime, "onnx" if runtime is not None else "torch"
            return runtime

    def _skip_token_ids(self) -> set[int]:
        """Token ids dropped from documents: colbert-ai's punctuation and pad, or PyLate's skiplist words."""
        s, tok = self.settings, self.tokenizer
        if not s.mask_punctuation:
            skip = set()
        elif s.skiplist_words is None:
            skip = punctuation_ids(tok)
        else:  # PyLate's rule: words not in the vocabulary map to (and so skip) the unknown token
            skip = {tok.convert_tokens_to_ids(w) for w in s.skiplist_words}
        # colbert-ai also drops pad tokens; PyLate's pad is [MASK], which it keeps when a document contains it
        return skip | ({tok.pad_token_id} if s.layout == "colbert-ai" else set())

    @property
    def dim(self) -> int:
        """Dimension of the output vectors."""
        return self.settings.dim

    def _forward(self, ids: np.ndarray, mask: np.ndarray) -> torch.Tensor:
        """Run encoder + projection + L2 norm on one padded batch; returns a float32 tensor (B, L, dim)."""
        import torch

        ids_t = torch.from_numpy(ids).to(self.device)
        mask_t = torch.from_numpy(mask).to(self.device)
        with torch.inference_mode(), torch.autocast("cuda", enabled=self.device.startswith("cuda")):
            hidden = self.model(input_ids=ids_t, attention_mask=mask_t)[0]
            out = self.linear(hidden)
        return torch.nn.functional.normalize(out.float(), p=2, dim=2)

    def _query_forward(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Unit vectors (B, L, dim) of a query batch, by the chosen query backend."""
        runtime = self._auto_query_runtime() if self.query_backend == "auto" else self._query_runtime
        if runtime is not None:
            return runtime(ids, mask)
        return self._forward(ids, mask).cpu().numpy()

    def _tokenize(self, texts: list[str], is_query: bool, max_length: int, **kwargs: Any) -> dict[str, Any]:
        """Tokenize with the query or document marker at position 1, as the checkpoint's layout does it.

        colbert-ai tokenizes ". " + text and overwrites the "." after [CLS]; PyLate tokenizes the
        stripped text to ``max_length - 1`` tokens and inserts its prefix token after [CLS].
        Returns ``input_ids`` and ``attention_mask`` (lists, or arrays with ``return_tensors="np"``).
        """
        s = self.settings
        insert = s.layout == "pylate" and s.markers
        if s.layout == "pylate":
            texts = [t.strip().lower() if s.do_lower_case else t.strip() for t in texts]
        elif s.markers:
            texts = [". " + t for t in texts]
        with self._tokenizer_lock:
            enc = self.tokenizer(texts, truncation=True, max_length=max_length - insert, **kwargs)
        ids, mask = enc["input_ids"], enc["attention_mask"]
        if s.markers:
            marker = self.q_marker if is_query else self.d_marker
            ids, mask = _put_at_1(ids, marker, insert), _put_at_1(mask, 1, insert)
        return {"input_ids": ids, "attention_mask": mask}

    def text_tokens_per_document(self) -> int:
        """Text tokens a document keeps when encoded: ``doc_maxlen`` less the special tokens added to it."""
        m = self.settings.doc_maxlen
        return m - len(self._tokenize([""], False, m)["input_ids"][0])

    def token_offsets(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """Per token of ``text`` (no special tokens, no truncation): its (start, end) characters and word number.

        Word numbers are -1 where the tokenizer gives none. Needs a fast (Rust) tokenizer.
        """
        if not getattr(self.tokenizer, "is_fast", False):
            raise InputError(
                "splitting documents into passages needs a fast (Rust) tokenizer; this checkpoint has none"
            )
        with self._tokenizer_lock:
            enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        offsets = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)
        words = np.asarray([-1 if x is None else x for x in enc.word_ids()], dtype=np.int64)
        return offsets, words

    # -- document length: truncation, counted and with bounded memory (see pooledir/truncation.py) --------------
    def count_truncated(self, documents: Sequence[str]) -> int:
        """How many of ``documents`` are longer than ``doc_maxlen`` tokens, i.e. lose their tail when encoded."""
        documents = check_texts(documents, "document", allow_empty=True)
        return int(self._document_ids(documents)[1].sum())

    def _document_ids(self, documents: list[str]) -> tuple[list[list[int]], np.ndarray]:
        """Token ids as encoded (at most ``doc_maxlen``) and which documents were cut to get there.

        Long texts are clipped first, so tokenizing one costs memory in proportion to
        ``doc_maxlen``, not to the text; the kept ids are the same.
        """
        from pooledir.truncation import clip_text

        m = self.settings.doc_maxlen

        def head(text: str) -> list[int]:
            ids: list[int] = self._tokenize([text], False, m + 1)["input_ids"][0]
            return ids

        clipped = [clip_text(t, m, head, min_chars=16 * m) for t in documents]
        ids = list(self._tokenize(clipped, False, m + 1)["input_ids"])  # one token more tells who was cut
        truncated = np.array([len(x) > m for x in ids], dtype=bool)
        cut = np.flatnonzero(truncated)
        if len(cut):
            for i, x in zip(cut, self._tokenize([clipped[i] for i in cut], False, m)["input_ids"]):
                ids[i] = x
        return ids, truncated

    def encode_queries(self, queries: Sequence[str]) -> np.ndarray:
        """Encode queries into an array of shape (n, query_maxlen, dim), float32.

        With query augmentation every position is kept, [MASK] padding included
        (colbert-ai); without it the padding rows are zero vectors.
        """
        queries = check_texts(queries, "query")
        tok, s = self.tokenizer, self.settings
        # without augmentation the padding is masked out and its rows are zeroed, so each batch is padded
        # only to its longest query (a short query costs its own length, not query_maxlen) and the rows
        # are added back as zeros: the same vectors, for less work
        padding = "max_length" if s.query_augmentation else "longest"
        out = np.zeros((len(queries), s.query_maxlen, self.dim), dtype=np.float32)
        for b in range(0, len(queries), self.batch_size):
            batch = queries[b : b + self.batch_size]
            enc = self._tokenize(batch, True, s.query_maxlen, padding=padding, return_tensors="np")
            ids, mask = enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)
            if s.query_augmentation:
                ids[ids == tok.pad_token_id] = tok.mask_token_id
                if s.attend_to_mask_tokens:
                    mask[ids == tok.mask_token_id] = 1
            vecs = self._query_forward(ids, mask)
            if not s.query_augmentation:
                vecs[mask == 0] = 0.0
            out[b : b + len(batch), : vecs.shape[1]] = vecs
        return out

    def encode_documents(
        self, documents: Sequence[str], show_progress: bool = False, dtype: str = "float16"
    ) -> list[np.ndarray]:
        """Encode documents into one array (n_tokens, dim) per document, in input order.

        Documents are sorted by token count and padded per batch; punctuation and padding are dropped.
        ``dtype`` is ``"float16"`` (what indexes store) or ``"float32"`` (the encoder's own precision).
        """
        if dtype not in ("float16", "float32"):
            raise InputError(f"dtype={dtype!r} must be 'float16' or 'float32'")
        import torch
        from tqdm.auto import tqdm

        documents = check_texts(documents, "document", allow_empty=True)
        tok = self.tokenizer
        ids_list, _ = self._document_ids(documents)
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
            mask = (np.arange(width)[None, :] < lengths[batch][:, None]).astype(np.int64)
            if self._document_runtime is not None:
                vecs = self._document_runtime(ids, mask).astype(dtype)
            else:
                vecs = self._forward(ids, mask).to(getattr(torch, dtype)).cpu().numpy()
            keep = ~np.isin(ids, self._skip_ids) & mask.astype(bool)
            for row, i in enumerate(batch):
                out[i] = vecs[row][keep[row]]
            bar.update(len(batch))
        bar.close()
        return out  # type: ignore[return-value]


def _put_at_1(seqs: Any, value: int, insert: bool) -> Any:
    """Insert ``value`` after the first token of each sequence, or overwrite position 1 with it."""
    if isinstance(seqs, np.ndarray):
        if insert:
            return np.insert(seqs, 1, value, axis=1)
        seqs[:, 1] = value
        return seqs
    if insert:
        return [x[:1] + [value] + x[1:] for x in seqs]
    for x in seqs:
        if len(x) > 1:
            x[1] = value
    return seqs


def _recorded(manifest: Manifest | Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """(checkpoint, recorded encoder settings) of a manifest or its JSON; settings older manifests lack are None."""
    if isinstance(manifest, Manifest):
        return manifest.checkpoint, manifest.encoder.settings()
    checkpoint, enc = manifest.get("checkpoint"), manifest.get("encoder")
    if not isinstance(enc, dict) or not checkpoint:
        raise IndexCorruptError("the index manifest lacks its 'encoder' settings or its 'checkpoint'")
    return str(checkpoint), EncoderRecord.from_json({"dim": 0} | enc).settings()


def encoder_key(
    manifest: Manifest | Mapping[str, Any], checkpoint: str | os.PathLike[str] | None = None
) -> tuple[Any, ...]:
    """What makes two indexes' encoders interchangeable: the same weights and the same recorded settings.

    Indexes with equal keys can share one :func:`encoder_for_index` result.
    """
    recorded_checkpoint, settings = _recorded(manifest)
    source = str(checkpoint_for_index(recorded_checkpoint, checkpoint))
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
        Where the weights are when the manifest's checkpoint path is not on this machine (e.g. a container
        mount); a recorded checkpoint that is here wins (:func:`checkpoint_for_index`).
    **kwargs
        Passed on to :class:`ColBERTEncoder` (e.g. ``batch_size``, ``query_backend``,
        ``document_backend``: how it runs, never what it computes).
    """
    recorded_checkpoint, settings = _recorded(manifest)
    source = checkpoint_for_index(recorded_checkpoint, checkpoint)
    return ColBERTEncoder(source, device=device, **(kwargs | settings))


def checkpoint_for_index(
    recorded: str | os.PathLike[str], fallback: str | os.PathLike[str] | None
) -> str | os.PathLike[str]:
    """The checkpoint an index loads: the one it records, or ``fallback`` where that folder is not on this machine.

    One rule for ``$POOLEDIR_CHECKPOINT`` everywhere: the checkpoint to use where none is given or found. An
    index built elsewhere (its recorded folder missing here, e.g. in a container) reads its weights from the
    fallback; one whose checkpoint is here never has it replaced, so indexes built with different
    checkpoints can be served together.
    """
    if fallback is None or Path(recorded).expanduser().exists():
        return recorded
    return fallback


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
