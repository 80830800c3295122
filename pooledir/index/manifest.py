"""manifest.json: what an index folder is (format, config, encoder), written once at creation.

What changes with every write (documents, segments, the quantizer) lives in
docs.sqlite, the commit point; the manifest only describes the folder, so it
never has to agree with a commit.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pooledir.durable import write_json_durably
from pooledir.errors import IndexCorruptError, InputError
from pooledir.pooling import check_pool_factor, check_pool_threshold

FORMAT = "pooledir-index"
FORMAT_VERSION = 3
#: versions this pooledir opens: 2 (``pq`` segments, still written to such folders) and 3 (``pq3`` segments)
READABLE_VERSIONS = (2, 3)
#: encoder settings an index records, so that queries are encoded the way its documents were
ENCODER_SETTINGS = ("layout", "doc_maxlen", "query_maxlen", "query_augmentation", "markers", "mask_punctuation")


DEFAULT_POOL_FACTOR = 2


class RecordableEncoder(Protocol):
    """What :meth:`EncoderRecord.of` reads: a loaded encoder, or a stand-in built from a record."""

    @property
    def path(self) -> str | os.PathLike[str]:
        """Where the checkpoint is."""
        ...

    @property
    def dim(self) -> int:
        """Vector dimension."""
        ...

    @property
    def settings(self) -> Any:
        """An object with the :data:`ENCODER_SETTINGS` as attributes."""
        ...


@dataclass(frozen=True)
class EncoderRecord:
    """How an index's (or a shard folder's) vectors were encoded: the ``encoder`` object of its JSON.

    Queries are encoded with these settings, whatever the checkpoint's own metadata says. Settings an
    older manifest lacks are None (the checkpoint's value is then used).
    """

    dim: int
    layout: str | None = None
    doc_maxlen: int | None = None
    query_maxlen: int | None = None
    query_augmentation: bool | None = None
    markers: bool | None = None
    mask_punctuation: bool | None = None

    @classmethod
    def of(cls, encoder: RecordableEncoder) -> EncoderRecord:
        """The record of a loaded encoder: the one rule that builds it."""
        return cls(dim=int(encoder.dim), **{k: getattr(encoder.settings, k) for k in ENCODER_SETTINGS})

    @classmethod
    def from_json(cls, data: Any) -> EncoderRecord:
        """Read the JSON object; raises :class:`IndexCorruptError` if it is not one with a ``dim``."""
        if not isinstance(data, dict) or not isinstance(data.get("dim"), int) or isinstance(data["dim"], bool):
            raise IndexCorruptError(f"the encoder record {data!r} is not an object with an integer 'dim'")
        return cls(dim=data["dim"], **{k: data.get(k) for k in ENCODER_SETTINGS})

    def to_json(self) -> dict[str, Any]:
        """The JSON object, keys in the order manifests have always had them."""
        return asdict(self)

    def settings(self) -> dict[str, Any]:
        """The recorded settings (all but ``dim``), as :class:`~pooledir.encoder.ColBERTEncoder` keywords."""
        return {k: getattr(self, k) for k in ENCODER_SETTINGS}


def record_encoder(encoder: RecordableEncoder) -> tuple[str, EncoderRecord]:
    """(checkpoint, record) as an index or a shard folder saves them: the checkpoint path resolved."""
    return str(Path(encoder.path).resolve()), EncoderRecord.of(encoder)


@dataclass(frozen=True)
class IndexConfig:
    """How an index stores vectors; fixed at creation and saved in the manifest.

    Attributes
    ----------
    backend : ``"ivfpq"`` (compressed, default) or ``"flat"`` (exact).
    pool_factor : shrink factor of each document's vectors (1 = no pooling).
    pool_threshold : adaptive pooling instead of a fixed factor: each document's Ward merges are applied
        while their height is at most this (see :func:`pooledir.pooling.pool_embeddings`); ``None`` = use
        ``pool_factor``. Set with the default ``pool_factor`` only, as the factor is then unused.
    protected_tokens : leading vectors never pooled (1 = [CLS]).
    nlist, pq_m, pq_nbits : IVF-PQ shape; ``None`` = ``2**floor(log2(16·√N))`` lists (N at training, at least
        39 training vectors a list) and dim/4 sub-quantizers of 6 bits (PQ32x6 at 128 d: eval/results/
        format_rule.md and code_rule.md's s11 rule); with ``pq_nbits=8`` (what manifests before s11 record)
        dim/8; format 2 folders: ≈4·√N lists, dim/2 and 8 bits. A re-training keeps the sub-quantizers and
        bits the index has unless these name them.
    keep_exact : also keep float16 vectors so MaxSim scores exactly (more disk).
    train_sample : vectors sampled to train IVF-PQ.
    train_min_vectors : an IVF-PQ index keeps its vectors exact (flat segments) until it holds this
        many, then trains on a sample of them; fewer cannot train 256-entry PQ codebooks well
        (faiss asks for 39 points per centroid: 39·256 ≈ 10,000).
    retrain_factor : compaction re-trains when the index has grown this many times past the
        vectors its quantizer was trained for (``info()`` says ``retrain_recommended``).
    max_segments : past this many segments, a write merges the smallest ones (tiered merging);
        segments under 65,536 vectors and larger ones count apart, so there are at most twice this.
    max_dead_fraction : past this share of deleted vectors still on disk, a write compacts.
    passage_stride : None (default) truncates documents longer than the encoder's ``doc_maxlen``; a number
        of tokens splits them into passages starting that far apart, searched by their best passage
        (see :mod:`pooledir.passages`).
    """

    backend: str = "ivfpq"
    pool_factor: int = DEFAULT_POOL_FACTOR
    pool_threshold: float | None = None
    protected_tokens: int = 1
    nlist: int | None = None
    pq_m: int | None = None
    pq_nbits: int | None = None
    keep_exact: bool = False
    train_sample: int = 262_144
    train_min_vectors: int = 10_000
    retrain_factor: float = 4.0
    max_segments: int = 16
    max_dead_fraction: float = 0.2
    passage_stride: int | None = None

    def check(self) -> None:
        """Raise :class:`InputError` for values that cannot work."""
        if self.backend not in ("ivfpq", "flat"):
            raise InputError(f"backend={self.backend!r} is not one of ['flat', 'ivfpq']")
        object.__setattr__(self, "pool_factor", check_pool_factor(self.pool_factor))  # a numpy int becomes an int
        object.__setattr__(self, "pool_threshold", check_pool_threshold(self.pool_threshold))
        if self.pool_threshold is not None and self.pool_factor != DEFAULT_POOL_FACTOR:
            raise InputError(
                f"pool_threshold={self.pool_threshold} and pool_factor={self.pool_factor} both choose how far "
                "documents are pooled; give one: a pool_threshold (adaptive) with the default pool_factor, "
                "or a pool_factor without pool_threshold"
            )
        if self.protected_tokens < 0:
            raise InputError(f"protected_tokens={self.protected_tokens} must be >= 0")
        if self.nlist is not None and self.nlist < 1:
            raise InputError(f"nlist={self.nlist} must be >= 1")
        if self.pq_nbits is not None and not 1 <= self.pq_nbits <= 16:
            raise InputError(f"pq_nbits={self.pq_nbits} must be between 1 and 16")
        if self.train_sample < 1:
            raise InputError(f"train_sample={self.train_sample} must be >= 1")
        if self.train_min_vectors < 1:
            raise InputError(f"train_min_vectors={self.train_min_vectors} must be >= 1")
        if self.retrain_factor <= 1:
            raise InputError(f"retrain_factor={self.retrain_factor} must be > 1")
        if self.max_segments < 2:
            raise InputError(f"max_segments={self.max_segments} must be >= 2")
        if not 0 < self.max_dead_fraction <= 1:
            raise InputError(f"max_dead_fraction={self.max_dead_fraction} must be in (0, 1]")
        stride = self.passage_stride
        if stride is not None and (isinstance(stride, bool) or not isinstance(stride, int) or stride < 1):
            raise InputError(f"passage_stride={stride!r} must be a positive number of tokens, or None for no passages")

    @property
    def pools(self) -> bool:
        """Whether documents' vectors are pooled at all (a factor above 1, or a threshold)."""
        return self.pool_factor > 1 or self.pool_threshold is not None

    @property
    def pooling(self) -> str:
        """How vectors are pooled, for messages: ``x2`` or ``<= 0.21`` (adaptive)."""
        return f"x{self.pool_factor}" if self.pool_threshold is None else f"<= {self.pool_threshold:g}"


@dataclass
class Manifest:
    """The folder's description: format, the encoder that made its vectors, and the config."""

    checkpoint: str
    encoder: EncoderRecord
    config: IndexConfig
    created_at: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    @property
    def dim(self) -> int:
        """Vector dimension."""
        return self.encoder.dim

    def to_json(self) -> dict[str, Any]:
        """The manifest.json content."""
        return asdict(self) | {"encoder": self.encoder.to_json(), "config": asdict(self.config)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        """A manifest from its JSON (format and version checked by :func:`read_manifest`)."""
        known = set(IndexConfig.__dataclass_fields__)
        return cls(
            checkpoint=data["checkpoint"],
            encoder=EncoderRecord.from_json(data["encoder"]),
            config=IndexConfig(**{k: v for k, v in data["config"].items() if k in known}),
            created_at=data.get("created_at", ""),
            format_version=data.get("format_version", FORMAT_VERSION),
        )

    def write(self, folder: Path) -> None:
        """Write manifest.json atomically and durably."""
        write_json_durably(folder / "manifest.json", self.to_json())


def read_manifest(path: str | os.PathLike[str]) -> Manifest:
    """Read and check an index folder's manifest.json (format and version)."""
    path = Path(path)
    mf = path / "manifest.json"
    if not path.is_dir():
        raise InputError(f"no index at {path}: not a folder")
    if not mf.is_file():
        raise IndexCorruptError(f"{path} is not a pooledir index: manifest.json is missing")
    try:
        data = json.loads(mf.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise IndexCorruptError(f"{mf} is corrupt: {e}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise IndexCorruptError(f"{mf} is not a pooledir manifest")
    version = data.get("format_version")
    if version == 1:
        raise IndexCorruptError(
            f"{path} is a format_version 1 index (one faiss file per generation); this pooledir reads "
            f"format_version {FORMAT_VERSION} (segments). Rebuild it: create a new index from the same "
            "corpus and checkpoint (the old folder's docs.sqlite still holds every document's text)"
        )
    if version not in READABLE_VERSIONS or type(version) is not int:
        raise IndexCorruptError(
            f"{mf} has format_version {_describe(version)}, "
            f"this pooledir reads {' and '.join(map(str, READABLE_VERSIONS))}"
        )
    try:
        return Manifest.from_json(data)
    except (KeyError, TypeError, AttributeError, IndexCorruptError) as e:
        raise IndexCorruptError(f"{mf} lacks or mangles a field: {e}") from None


def _describe(value: object) -> str:
    """A JSON value as written, with its type unless it is an integer: ``"2" (a string)``."""
    if type(value) is int:
        return str(value)
    kinds = {str: "string", float: "number", bool: "boolean", list: "list", dict: "object"}
    return f"{json.dumps(value)} (a {kinds.get(type(value), 'JSON null')})"
