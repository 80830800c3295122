"""Encoded corpora on disk: token vectors in shards that any process can write and any index can read.

``pooledir encode`` writes a folder of shards; ``pooledir index --embeddings`` builds an index from
it without loading an encoder. Shard ``n`` holds the documents at corpus positions
``[n * shard_docs, (n + 1) * shard_docs)``, so separate processes (``part``/``parts``: shard numbers
``n % parts == part``) write disjoint shards into one folder, or into separate folders that are
indexed one after the other. A shard is five files::

    shard-00000.npy           float16 (total_vectors, dim): every document's vectors, in document order
    shard-00000.lengths.npy   int32 (documents,): vectors per document (rows of the .npy, in order)
    shard-00000.ntokens.npy   int32 (documents,): token vectors per document before pooling
    shard-00000.ids.jsonl     one {"id", "text", "metadata"} object per document, in order
    shard-00000.json          the shard's header (written last: its presence means the shard is complete)

The header is self-describing: format, version, dim, pool factor, protected tokens, checkpoint,
encoder settings, shard_docs, the shard's number, first corpus position and counts, the sha256 of
its ids and of each of its four data files; a shard written by one part of a split encode also records
``parts``, the split's part count (so a later part with another count is refused). ``manifest.json``
(the same folder-level fields plus the list of completed shards) is re-derived from the headers under
a lock after every shard, and ``end.json`` records the corpus length once a writer has read to its end.
Every file is written to a temporary name, fsynced, renamed, and the folder fsynced.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pooledir.corpus import Document
from pooledir.durable import fsync_dir, read_versioned_json, write_json_durably
from pooledir.errors import FormatError, IndexCorruptError, InputError
from pooledir.index.manifest import EncoderRecord

log = logging.getLogger(__name__)

FORMAT = "pooledir-shards"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
END = "end.json"
#: a shard's data files, by role: suffix after ``shard-NNNNN``
DATA_FILES = {"vectors": ".npy", "lengths": ".lengths.npy", "ntokens": ".ntokens.npy", "ids": ".ids.jsonl"}
_HEADER_RE = re.compile(r"^shard-(\d{5,})\.json$")


class ShardError(FormatError):
    """A shard folder that cannot be read or resumed: missing or mismatched files, a corrupt manifest."""


@dataclass(frozen=True)
class ShardSpec:
    """What every shard of a folder shares: how its vectors were made.

    Attributes
    ----------
    dim : vector dimension.
    pool_factor : the factor the vectors were pooled with (1 = unpooled token vectors).
    protected_tokens : leading vectors pooling kept as they are.
    checkpoint : the encoder's checkpoint (as resolved on the machine that encoded).
    encoder : the encoder record an index records (dim, doc/query lengths, conventions); a dict is read as one.
    shard_docs : documents per shard (shard n starts at corpus position n * shard_docs).
    """

    dim: int
    pool_factor: int
    protected_tokens: int
    checkpoint: str
    encoder: EncoderRecord
    shard_docs: int

    def __post_init__(self) -> None:
        if isinstance(self.encoder, dict):  # from JSON, or from asdict() across processes
            object.__setattr__(self, "encoder", EncoderRecord.from_json(self.encoder))

    def differences(self, other: ShardSpec) -> list[str]:
        """Fields whose values differ, as ``name: mine vs other``."""
        a, b = asdict(self), asdict(other)
        return [f"{k}: {a[k]!r} vs {b[k]!r}" for k in a if a[k] != b[k]]


@dataclass(frozen=True)
class ShardInfo:
    """One completed shard, as its header and the folder manifest list it."""

    number: int
    start: int
    documents: int
    vectors: int
    tokens: int
    ids_sha256: str
    sha256: dict[str, str]

    @property
    def name(self) -> str:
        """``shard-NNNNN``: the stem of its files."""
        return shard_name(self.number)


@dataclass(frozen=True)
class ShardManifest:
    """A shard folder: the shared spec, its completed shards in order, and the corpus length if known."""

    path: Path
    spec: ShardSpec
    shards: list[ShardInfo]
    end: int | None = None

    @property
    def documents(self) -> int:
        """Documents in the completed shards."""
        return sum(s.documents for s in self.shards)

    @property
    def vectors(self) -> int:
        """Vectors in the completed shards."""
        return sum(s.vectors for s in self.shards)

    def missing(self) -> list[int]:
        """Shard numbers a complete folder would hold but this one lacks (empty when complete)."""
        if self.end is None:
            return []
        have = {s.number for s in self.shards}
        n = -(-self.end // self.spec.shard_docs)
        return [i for i in range(n) if i not in have]

    @property
    def complete(self) -> bool:
        """True when a writer read the corpus to its end and every shard up to it is here."""
        return self.end is not None and not self.missing()

    def to_json(self) -> dict[str, Any]:
        """The manifest.json content."""
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            **asdict(self.spec),
            "end": self.end,
            "documents": self.documents,
            "vectors": self.vectors,
            "shards": [asdict(s) | {"name": s.name} for s in self.shards],
        }


def shard_name(number: int) -> str:
    """File stem of shard ``number``."""
    return f"shard-{number:05d}"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def ids_digest(ids: Iterable[str]) -> tuple[int, str]:
    """(count, sha256) of a run of document ids: how a resumed encode checks the input did not change."""
    h = hashlib.sha256()
    n = 0
    for i in ids:
        h.update(i.encode("utf-8") + b"\n")
        n += 1
    return n, h.hexdigest()


# -- reading headers and manifests -----------------------------------------------------------------------------
def _load_json(path: Path, what: str) -> dict[str, Any]:
    return read_versioned_json(
        path, FORMAT, FORMAT_VERSION, what, "re-encode the corpus with this version", error=ShardError
    )


def _spec_of(data: dict[str, Any], path: Path) -> ShardSpec:
    try:
        spec = ShardSpec(**{k: data[k] for k in ShardSpec.__dataclass_fields__})
    except KeyError as e:
        raise ShardError(f"{path} lacks the field {e}") from None
    except IndexCorruptError as e:  # a mangled encoder record
        raise ShardError(f"{path}: {e}") from None
    if not (isinstance(spec.dim, int) and spec.dim > 0 and isinstance(spec.shard_docs, int) and spec.shard_docs > 0):
        raise ShardError(f"{path}: dim={spec.dim!r} and shard_docs={spec.shard_docs!r} must be positive integers")
    return spec


def _info_of(data: dict[str, Any], path: Path) -> ShardInfo:
    try:
        return ShardInfo(**{k: data[k] for k in ShardInfo.__dataclass_fields__})
    except (KeyError, TypeError) as e:
        raise ShardError(f"{path} lacks or mangles a shard field: {e}") from None


def read_shard_header(path: Path) -> tuple[ShardSpec, ShardInfo]:
    """The spec and info a shard's ``shard-NNNNN.json`` header records."""
    data = _load_json(path, "shard header")
    return _spec_of(data, path), _info_of(data, path)


def _headers(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if _HEADER_RE.match(p.name))


def derive_shard_manifest(path: str | os.PathLike[str]) -> ShardManifest:
    """Build a folder's manifest from its shard headers (and ``end.json``), ignoring manifest.json."""
    path = Path(path)
    spec: ShardSpec | None = None
    shards = []
    for header in _headers(path):
        s, info = read_shard_header(header)
        if spec is not None and s != spec:
            raise ShardError(
                f"{header} does not match the other shards of {path} ({'; '.join(s.differences(spec))}); "
                "shards of one folder need the same encoder, dim and pooling: move it to its own folder"
            )
        spec = s
        shards.append(info)
    if spec is None:
        raise ShardError(f"{path} holds no completed shard (no shard-NNNNN.json header)")
    end = None
    if (path / END).is_file():
        end = _load_json(path / END, "end marker").get("documents")
    return ShardManifest(path, spec, sorted(shards, key=lambda s: s.number), end)


def read_shard_manifest(path: str | os.PathLike[str]) -> ShardManifest:
    """Read a shard folder: manifest.json if present, plus any completed shard it does not list yet.

    Without manifest.json (e.g. shards copied in from another machine) it is derived from the shard
    headers. A corrupt manifest is an error, not silently re-derived: delete it to re-derive it.
    """
    path = Path(path)
    if not path.is_dir():
        raise ShardError(f"no shard folder at {path}")
    mf = path / MANIFEST
    if not mf.is_file():
        return derive_shard_manifest(path)
    derived = derive_shard_manifest(path) if _headers(path) else None
    data = _load_json(mf, "shard folder manifest")
    spec = _spec_of(data, mf)
    try:
        listed = {int(s["number"]): _info_of(s, mf) for s in data["shards"]}
    except (KeyError, TypeError, ValueError) as e:
        raise ShardError(
            f"{mf} is corrupt (its shard list: {e}); delete it and it is re-derived from the shard headers"
        ) from None
    if derived is not None:
        if derived.spec != spec:
            raise ShardError(
                f"{mf} disagrees with the shard headers of {path} ({'; '.join(spec.differences(derived.spec))}); "
                "delete it and it is re-derived from the shard headers"
            )
        for info in derived.shards:  # committed by its header, not listed yet (a crash before the manifest update)
            listed.setdefault(info.number, info)
    end = data.get("end") if derived is None or derived.end is None else derived.end
    return ShardManifest(path, spec, [listed[n] for n in sorted(listed)], end)


def recorded_part_counts(path: str | os.PathLike[str]) -> dict[int, list[int]]:
    """Part counts the shard headers of ``path`` record (shards of split encodes), each with its shard numbers."""
    counts: dict[int, list[int]] = {}
    for header in _headers(Path(path)):
        parts = _load_json(header, "shard header").get("parts")
        if isinstance(parts, int) and parts > 1:
            counts.setdefault(parts, []).append(int(header.stem.split("-")[1]))
    return counts


def check_compatible(manifests: Sequence[ShardManifest]) -> ShardSpec:
    """The spec shared by several shard folders, or a :class:`ShardError` naming what differs."""
    first = manifests[0]
    for m in manifests[1:]:
        diff = [d for d in m.spec.differences(first.spec) if not d.startswith("shard_docs")]
        if diff:
            raise ShardError(
                f"{m.path} and {first.path} hold vectors made differently ({'; '.join(diff)}); "
                "one index needs shards from the same encoder, dim and pooling"
            )
    return first.spec


# -- one shard, opened lazily ----------------------------------------------------------------------------------
@dataclass
class Shard:
    """A completed shard, its vectors memory-mapped.

    ``vectors`` is float16 (total_vectors, dim); document ``i`` owns rows
    ``offsets[i]:offsets[i + 1]``. :meth:`documents` reads ids.jsonl lazily.
    """

    path: Path
    spec: ShardSpec
    info: ShardInfo
    vectors: np.ndarray
    lengths: np.ndarray
    n_tokens: np.ndarray
    offsets: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths, dtype=np.int64)])

    def file(self, role: str) -> Path:
        """Path of one of the shard's data files (``vectors``, ``lengths``, ``ntokens``, ``ids``)."""
        return self.path / (self.info.name + DATA_FILES[role])

    def documents(self) -> Iterator[Document]:
        """The shard's documents, in order, read one line at a time."""
        fp = self.file("ids")
        n = 0
        with open(fp, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                try:
                    rec = json.loads(line)
                    doc = Document(str(rec["id"]), rec["text"], rec.get("metadata") or {})
                except (json.JSONDecodeError, KeyError, TypeError) as e:
                    raise ShardError(f"{fp}:{lineno}: not an {{id, text, metadata}} object ({e})") from None
                n += 1
                if n > self.info.documents:
                    raise ShardError(f"{fp} holds more documents than the {self.info.documents} its header says")
                yield doc
        if n != self.info.documents:
            raise ShardError(f"{fp} holds {n} documents but its header says {self.info.documents}")


def open_shard(folder: Path, spec: ShardSpec, info: ShardInfo, verify: bool = True) -> Shard:
    """Open and check one shard: files present (and matching their sha256 with ``verify``), shapes consistent."""
    files = {role: folder / (info.name + suffix) for role, suffix in DATA_FILES.items()}
    for fp in files.values():
        if not fp.is_file():
            raise ShardError(
                f"{fp} is missing (shard {info.number} of {folder}); copy it back, or re-encode that shard "
                f"(delete {info.name}.json and resume the encode)"
            )
    if verify:
        for role, fp in files.items():
            want = info.sha256.get(role)
            if want is not None and _sha256(fp) != want:
                raise ShardError(
                    f"{fp} does not match the sha256 its header records: the file is corrupt or was replaced; "
                    f"re-encode that shard (delete {info.name}.json and resume the encode)"
                )
    try:
        vectors = np.load(files["vectors"], mmap_mode="r")
        lengths = np.load(files["lengths"])
        n_tokens = np.load(files["ntokens"])
    except (ValueError, OSError) as e:
        raise ShardError(f"shard {info.name} of {folder} is unreadable: {e}") from None
    where = f"shard {info.name} of {folder}"
    if vectors.ndim != 2 or vectors.shape[1] != spec.dim:
        raise ShardError(f"{where}: vectors of shape {vectors.shape}, but the folder's dim is {spec.dim}")
    if vectors.dtype != np.float16:
        raise ShardError(f"{where}: vectors are {vectors.dtype}, float16 expected")
    if lengths.shape != (info.documents,) or n_tokens.shape != (info.documents,):
        raise ShardError(
            f"{where}: {len(lengths)} lengths and {len(n_tokens)} token counts for {info.documents} documents"
        )
    if (lengths < 1).any():
        raise ShardError(f"{where}: every document needs at least one vector (a length is {int(lengths.min())})")
    if int(lengths.sum()) != len(vectors):
        raise ShardError(
            f"{where}: the lengths add up to {int(lengths.sum())} vectors but the shard holds {len(vectors)}; "
            "the shard is inconsistent: re-encode it"
        )
    return Shard(folder, spec, info, vectors, lengths.astype(np.int64), n_tokens.astype(np.int64))


def iter_shards(path: str | os.PathLike[str], verify: bool = True) -> Iterator[Shard]:
    """Yield a folder's completed shards in corpus order, each opened (memory-mapped) only when reached."""
    manifest = read_shard_manifest(path)
    for info in manifest.shards:
        yield open_shard(manifest.path, manifest.spec, info, verify=verify)


# -- writing ---------------------------------------------------------------------------------------------------
class ShardWriter:
    """Write a corpus's vectors into a shard folder, one shard at a time; resumable.

    ``open`` starts a folder (or resumes one written with the same spec). For each shard,
    :meth:`begin` opens temporary files, :meth:`append` streams documents into them (memory:
    only what is appended), and :meth:`commit` fsyncs and renames them, then writes the header,
    which is what makes the shard complete, and refreshes manifest.json.
    """

    def __init__(self, path: Path, spec: ShardSpec, tmp_suffix: str = ".tmp", parts: int = 1) -> None:
        self.path = path
        self.spec = spec
        #: the part count of the split encode this writer is one part of (1: not split); headers record it
        self.parts = parts
        #: suffix of an open shard's files; writers that may retry one shard at once give each try its own
        self.tmp_suffix = tmp_suffix
        self._cur: dict[str, Any] | None = None

    @classmethod
    def open(cls, path: str | os.PathLike[str], spec: ShardSpec, resume: bool = False, parts: int = 1) -> ShardWriter:
        """Start a shard folder at ``path`` (new or empty), or with ``resume`` continue one with the same spec.

        ``parts``: the part count of the split encode this writer is one part of, recorded in its headers.
        """
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise ShardError(f"{path} is a file; pick a folder for the shards")
        if path.is_dir() and any(path.iterdir()):
            if not resume:
                raise ShardError(f"{path} exists and is not empty; pick a new folder, or resume the encode there")
            if _headers(path):
                have = read_shard_manifest(path).spec
                if have != spec:
                    diff = "; ".join(have.differences(spec))
                    raise ShardError(
                        f"cannot resume {path}: it was encoded with other settings ({diff}); "
                        "resume with the same ones or pick a new folder"
                    )
        path.mkdir(parents=True, exist_ok=True)
        return cls(path, spec, parts=parts)

    def completed(self) -> dict[int, ShardInfo]:
        """Completed shards by number (their headers exist)."""
        return {info.number: info for info in (read_shard_header(h)[1] for h in _headers(self.path))}

    def _files(self, number: int, tmp: bool) -> dict[str, Path]:
        stem = shard_name(number)
        return {r: self.path / (stem + s + (self.tmp_suffix if tmp else "")) for r, s in DATA_FILES.items()}

    def begin(self, number: int, start: int) -> None:
        """Open shard ``number`` (first corpus position ``start``) for appending, replacing any unfinished try."""
        if self._cur is not None:
            raise RuntimeError("commit the open shard first")
        if start != number * self.spec.shard_docs:
            raise ValueError(f"shard {number} starts at {number * self.spec.shard_docs}, not {start}")
        files = self._files(number, tmp=True)
        vec = open(files["vectors"], "wb")
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float16)), "fortran_order": False}
        # written again with the real row count at commit: numpy leaves room for the shape to grow
        np.lib.format.write_array_header_1_0(vec, header | {"shape": (0, self.spec.dim)})
        self._cur = {
            "number": number,
            "start": start,
            "files": files,
            "vec": vec,
            "header_len": vec.tell(),
            "ids": open(files["ids"], "w", encoding="utf-8"),
            "lengths": [],
            "ntokens": [],
            "id_list_digest": hashlib.sha256(),
        }

    def append(self, docs: Sequence[Document], vectors: Sequence[np.ndarray], n_tokens: Sequence[int]) -> None:
        """Append documents and their vectors (one (n, dim) array each) to the open shard."""
        cur = self._cur
        if cur is None:
            raise RuntimeError("begin a shard first")
        if not len(docs) == len(vectors) == len(n_tokens):
            raise InputError(f"{len(docs)} documents, {len(vectors)} vector arrays, {len(n_tokens)} token counts")
        for d, v in zip(docs, vectors):
            if v.ndim != 2 or v.shape[1] != self.spec.dim or len(v) == 0:
                raise InputError(f"document {d.id!r}: vectors of shape {v.shape}, expected (n >= 1, {self.spec.dim})")
        cur["vec"].write(np.concatenate(vectors).astype(np.float16).tobytes())
        for d in docs:
            cur["ids"].write(json.dumps({"id": d.id, "text": d.text, "metadata": d.metadata}, ensure_ascii=False))
            cur["ids"].write("\n")
            cur["id_list_digest"].update(d.id.encode("utf-8") + b"\n")
        cur["lengths"].extend(len(v) for v in vectors)
        cur["ntokens"].extend(int(n) for n in n_tokens)

    def commit(self) -> ShardInfo:
        """Make the open shard durable and complete; returns its info."""
        cur, self._cur = self._cur, None
        if cur is None:
            raise RuntimeError("no open shard")
        files = cur["files"]
        lengths = np.array(cur["lengths"], dtype=np.int32)
        ntokens = np.array(cur["ntokens"], dtype=np.int32)
        vec = cur["vec"]
        vec.seek(0)
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float16)), "fortran_order": False}
        np.lib.format.write_array_header_1_0(vec, header | {"shape": (int(lengths.sum()), self.spec.dim)})
        if vec.tell() != cur["header_len"]:
            raise RuntimeError("the .npy header changed length")  # numpy reserves room; never expected
        for f in (vec, cur["ids"]):
            f.flush()
            os.fsync(f.fileno())
            f.close()
        for role, arr in (("lengths", lengths), ("ntokens", ntokens)):
            with open(files[role], "wb") as f:
                np.save(f, arr)
                f.flush()
                os.fsync(f.fileno())
        info = ShardInfo(
            number=cur["number"],
            start=cur["start"],
            documents=len(lengths),
            vectors=int(lengths.sum()),
            tokens=int(ntokens.sum()),
            ids_sha256=cur["id_list_digest"].hexdigest(),
            sha256={role: _sha256(fp) for role, fp in files.items()},
        )
        final = self._files(info.number, tmp=False)
        for role in DATA_FILES:
            os.replace(files[role], final[role])
        fsync_dir(self.path)
        header_path = self.path / (info.name + ".json")
        split = {"parts": self.parts} if self.parts > 1 else {}  # an unsplit encode's headers stay as they were
        header = {"format": FORMAT, "format_version": FORMAT_VERSION, **asdict(self.spec)} | asdict(info) | split
        write_json_durably(header_path, header)
        self.update_manifest()
        return info

    def abort(self) -> None:
        """Drop the open shard's temporary files (nothing committed is touched)."""
        cur, self._cur = self._cur, None
        if cur is None:
            return
        for f in (cur["vec"], cur["ids"]):
            f.close()
        for fp in cur["files"].values():
            fp.unlink(missing_ok=True)

    def finish(self, documents: int) -> None:
        """Record that the corpus holds ``documents`` documents (the writer read it to its end)."""
        write_json_durably(
            self.path / END, {"format": FORMAT, "format_version": FORMAT_VERSION, "documents": documents}
        )
        self.update_manifest()

    def update_manifest(self) -> ShardManifest:
        """Re-derive manifest.json from the shard headers, under a lock shared with other writers."""
        with open(self.path / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            manifest = derive_shard_manifest(self.path)
            write_json_durably(self.path / MANIFEST, manifest.to_json())
        return manifest
