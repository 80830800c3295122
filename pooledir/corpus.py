"""Read documents from BEIR folders, jsonl, parquet, tsv and folders of text files.

Every reader yields :class:`Document` objects; errors name the file and the
line (or parquet row) so a user can fix a 5 GB corpus without bisecting it.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pooledir.errors import InputError

#: metadata nested deeper than this is refused (Python's json and sqlite's JSON functions give up near 1000)
MAX_METADATA_DEPTH = 64
#: rows a parquet corpus is decoded in at a time (memory stays bounded by this, not by the row group)
PARQUET_BATCH_ROWS = 1024
PARQUET_INSTALL_HINT = (
    'reading a parquet corpus needs pyarrow; install the parquet extra: pip install "pooledir[parquet]"'
)


@dataclass(frozen=True)
class Document:
    """One document: an external id, the text to encode, and free metadata.

    Checked when built (:func:`check_document`), so a bad value fails here, naming the document,
    rather than deep inside a write.
    """

    id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_document(self)

    @classmethod
    def from_parts(
        cls, id: str, text: str, title: str | None = None, metadata: dict[str, Any] | None = None
    ) -> Document:
        """A document from BEIR-style parts: encoded as :func:`document_text`, the title kept in ``metadata``."""
        metadata = dict(metadata or {}) | ({"title": title} if title else {})
        return cls(id, document_text(title, text), metadata)


def document_id(value: object, where: str) -> str:
    """The document id of a record: a string, or a JSON number written as Python writes it (7 -> "7").

    Lists, objects, booleans and null are refused rather than stored as their Python repr.
    """
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        what = "null" if value is None else type(value).__name__
        raise InputError(f"{where}: document id (field '_id' or 'id') must be a string or a number, got {what}")
    if isinstance(value, float) and not math.isfinite(value):
        raise InputError(f"{where}: document id {value!r} is not a finite number")
    return value if isinstance(value, str) else str(value)


def document_text(title: str | None, text: str) -> str:
    """The text pooledir encodes for a titled document: ``title + " " + text`` (BEIR's rule), else ``text``."""
    return f"{title} {text}".strip() if title else text


def document_from_record(record: dict[str, Any], where: str = "record") -> Document:
    """Build a Document from a BEIR/jsonl-style dict (``_id`` or ``id``, ``title``, ``text``).

    The encoded text is ``title + " " + text`` (BEIR's rule); the title and any
    other fields go to ``metadata``.
    """
    if not isinstance(record, dict):
        raise InputError(f"{where}: expected a JSON object, got {type(record).__name__}")
    doc_id = record.get("_id", record.get("id"))
    if doc_id is None or (isinstance(doc_id, str) and not doc_id.strip()):
        raise InputError(f"{where}: missing document id (field '_id' or 'id')")
    doc_id = document_id(doc_id, where)
    text = record.get("text")
    if not isinstance(text, str):
        raise InputError(f"{where}: field 'text' must be a string, got {type(text).__name__}")
    title = record.get("title") or ""
    if not isinstance(title, str):
        raise InputError(f"{where}: field 'title' must be a string, got {type(title).__name__}")
    metadata = record.get("metadata")
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise InputError(f"{where}: field 'metadata' must be a JSON object, got {type(metadata).__name__}")
    try:
        return Document.from_parts(doc_id, text, title, metadata)
    except InputError as e:
        raise InputError(f"{where}: {e}") from None


def _not_utf8(path: Path) -> InputError:
    """The error for a file that is not UTF-8, naming its first bad line (found by a second, binary pass)."""
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as e:
                return InputError(f"{path}:{lineno}: not UTF-8 text ({e.reason} at byte {e.start} of the line)")
    return InputError(f"{path}: not UTF-8 text")


def document_from_json_line(line: str, where: str) -> Document:
    """One JSON corpus line as a Document; malformed JSON is an :class:`InputError` naming ``where``."""
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, RecursionError) as e:
        raise InputError(f"{where}: malformed JSON ({getattr(e, 'msg', 'nested too deeply')})") from None
    return document_from_record(record, where)


def _read_jsonl(path: Path) -> Iterator[Document]:
    try:
        with path.open(encoding="utf-8-sig") as f:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    yield document_from_json_line(line, f"{path}:{lineno}")
    except UnicodeDecodeError:
        raise _not_utf8(path) from None


def _parquet_file(path: Path) -> Any:
    """Open ``path`` as a ``pyarrow.parquet.ParquetFile`` (reads only its footer), checking its columns.

    pyarrow is imported here, not at module import: the base install reads every other format without it.
    """
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError(PARQUET_INSTALL_HINT) from None
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise InputError(f"{path}: not a readable parquet file ({e})") from None
    names = pf.schema_arrow.names
    if "_id" not in names and "id" not in names:
        raise InputError(f"{path}: a parquet corpus needs a column '_id' or 'id'; it has {names}")
    if "text" not in names:
        raise InputError(f"{path}: a parquet corpus needs a column 'text'; it has {names}")
    return pf


def _read_parquet(path: Path, start: int = 0) -> Iterator[Document]:
    """The documents of a parquet file from row ``start`` (0-based) on, decoded a batch at a time.

    Columns ``_id`` (or ``id``), ``text``, optional ``title`` and ``metadata`` (a struct) are read as a
    .jsonl record's fields; every other column is a metadata field, left out of a row where it is null.
    Only the row groups from the one holding ``start`` on are decoded. Errors name the row, counted
    from 1. The file's footer is read (and pyarrow imported) now, so a bad file fails before the first
    document is asked for.
    """
    return _parquet_documents(_parquet_file(path), path, start)


def _parquet_documents(pf: Any, path: Path, start: int) -> Iterator[Document]:
    import pyarrow as pa

    meta = pf.metadata
    group, row = 0, 0  # the row group holding `start`, and the row it begins at
    while group < meta.num_row_groups and row + meta.row_group(group).num_rows <= start:
        row += meta.row_group(group).num_rows
        group += 1
    extra = [c for c in pf.schema_arrow.names if c not in ("_id", "id", "text", "title", "metadata")]
    batches = pf.iter_batches(
        batch_size=PARQUET_BATCH_ROWS, row_groups=range(group, meta.num_row_groups), use_threads=False
    )
    try:
        for batch in batches:
            skip = max(0, min(start - row, batch.num_rows))  # rows of the first group before `start`
            row += skip
            for record in batch.slice(skip).to_pylist():
                row += 1
                more = {c: record.pop(c) for c in extra if record.get(c) is not None}
                if more and record.get("metadata") is None:
                    record["metadata"] = more
                elif more and isinstance(record["metadata"], dict):
                    record["metadata"] = more | record["metadata"]
                yield document_from_record(record, f"{path}: row {row}")
    except pa.ArrowException as e:
        raise InputError(f"{path}: cannot decode the parquet rows after row {row} ({e})") from None


def _read_tsv(path: Path) -> Iterator[Document]:
    """Rows of ``id<TAB>text[<TAB>title]``; a header row starting with ``id`` or ``_id`` is skipped."""
    csv.field_size_limit(sys.maxsize)
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            for lineno, row in enumerate(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE), 1):
                if not row or not "".join(row).strip():
                    continue
                if lineno == 1 and row[0].strip().lower() in ("id", "_id", "docid", "doc_id"):
                    continue
                if len(row) < 2:
                    raise InputError(f"{path}:{lineno}: expected 'id<TAB>text[<TAB>title]', got {len(row)} column")
                record = {"_id": row[0], "text": row[1], "title": row[2] if len(row) > 2 else ""}
                yield document_from_record(record, f"{path}:{lineno}")
    except UnicodeDecodeError:
        raise _not_utf8(path) from None


def _read_txt(path: Path, doc_id: str) -> Document:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    try:
        return Document(id=doc_id, text=text, metadata={"path": str(path)})
    except InputError as e:
        raise InputError(f"{path}: {e}") from None


def _read_txt_folder(path: Path) -> Iterator[Document]:
    files = sorted(p for p in path.rglob("*.txt") if p.is_file())
    for p in files:
        yield _read_txt(p, str(p.relative_to(path).with_suffix("")))


def _resolve(path: Path) -> tuple[str, Path]:
    """Which reader a corpus path needs ("jsonl", "tsv", "txt-folder", "txt") and the file or folder it reads."""
    if not path.exists():
        raise InputError(f"corpus not found: {path}")
    if path.is_dir():
        if (path / "corpus.jsonl").is_file():
            return "jsonl", path / "corpus.jsonl"
        if (path / "corpus.parquet").is_file():
            return "parquet", path / "corpus.parquet"
        if any(path.rglob("*.txt")):
            return "txt-folder", path
        raise InputError(f"{path}: a corpus folder needs corpus.jsonl or corpus.parquet (BEIR layout) or .txt files")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        return "jsonl", path
    if suffix in (".parquet", ".pq"):
        return "parquet", path
    if suffix in (".tsv", ".tab"):
        return "tsv", path
    if suffix == ".txt":
        return "txt", path
    raise InputError(
        f"{path}: unknown corpus format '{suffix}'; use .jsonl, .parquet, .tsv, a .txt folder or a BEIR folder"
    )


def iter_corpus(path: str | Path) -> Iterator[Document]:
    """Yield the documents of ``path``, one at a time (nothing is read ahead).

    ``path`` may be a BEIR dataset folder (with ``corpus.jsonl`` or ``corpus.parquet``), a
    ``.jsonl``, ``.parquet`` or ``.tsv`` file, or a folder of ``.txt`` files (id = relative path
    without the suffix).
    """
    path = Path(path)
    kind, source = _resolve(path)
    if kind == "jsonl":
        return _read_jsonl(source)
    if kind == "parquet":
        return _read_parquet(source)
    if kind == "tsv":
        return _read_tsv(source)
    if kind == "txt-folder":
        return _read_txt_folder(source)
    return iter([_read_txt(path, path.stem)])


def count_documents(path: str | Path) -> int | None:
    """About how many documents :func:`iter_corpus` yields, cheaply: for a progress bar's total and ETA.

    Lines of a .jsonl/.tsv file (counted in 1 MiB blocks; blank lines and a header row count too),
    the rows of a .parquet file (from its footer: exact), the number of files of a .txt folder;
    None for a named pipe or other stream, which can be read only once (the bar then shows no ETA).
    Never parses a document.
    """
    kind, source = _resolve(Path(path))
    if kind != "txt-folder" and not source.is_file():
        return None
    if kind == "parquet":
        return int(_parquet_file(source).metadata.num_rows)
    if kind == "txt":
        return 1
    if kind == "txt-folder":
        return sum(1 for p in source.rglob("*.txt") if p.is_file())
    lines, last = 0, b"\n"
    with source.open("rb") as f:
        while block := f.read(1 << 20):
            lines += block.count(b"\n")
            last = block[-1:]
    return lines + (last != b"\n")


def check_utf8(text: str, what: str) -> str:
    """Return ``text``, or raise InputError if it is not a string that UTF-8 can store (a lone surrogate)."""
    if not isinstance(text, str):
        raise InputError(f"{what} is {type(text).__name__}, expected a string")
    if text.isascii():  # constant time in CPython: no copy of a long text
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InputError(
            f"{what} is not valid Unicode: a lone surrogate {text[e.start]!r} at character {e.start}; send UTF-8 text"
        ) from None
    return text


def check_metadata(metadata: Any, what: str = "metadata") -> dict[str, Any]:
    """Return ``metadata``, or raise InputError unless it is a JSON object that stores and reads back unchanged.

    That is: string keys, UTF-8 strings, finite numbers, at most ``MAX_METADATA_DEPTH`` levels of nesting.
    """
    if not isinstance(metadata, dict):
        raise InputError(f"{what} must be an object (dict), got {type(metadata).__name__}")
    stack: list[tuple[Any, int]] = [(metadata, 1)]
    while stack:  # a loop, not recursion: deep nesting must give this error, not a RecursionError
        value, depth = stack.pop()
        if isinstance(value, (dict, list, tuple)) and depth > MAX_METADATA_DEPTH:
            raise InputError(f"{what} is nested more than {MAX_METADATA_DEPTH} levels deep; flatten it")
        if isinstance(value, dict):
            for key, item in value.items():
                check_utf8(key, f"{what} key {key!r}")
                stack.append((item, depth + 1))
        elif isinstance(value, (list, tuple)):
            stack.extend((item, depth + 1) for item in value)
        elif isinstance(value, str):
            check_utf8(value, f"{what} value")
        elif isinstance(value, float) and not math.isfinite(value):
            raise InputError(f"{what} holds {value}; JSON has no NaN or infinity")
        elif value is not None and not isinstance(value, (bool, int, float)):
            raise InputError(
                f"{what} holds a {type(value).__name__}; only objects, lists, strings, numbers, booleans and null"
            )
    return metadata


def check_document(d: Document, where: str = "") -> Document:
    """Return ``d``, or raise InputError (prefixed ``where``) unless sqlite and JSON can store it as it is.

    The id is a non-blank string, the text a string, both valid Unicode; the metadata passes
    :func:`check_metadata`. One rule: a Document runs it when built, :func:`check_documents` again
    (a metadata dict may have changed since).
    """
    at = f"{where}: " if where else ""
    check_utf8(d.id, f"{at}document id")
    if not d.id.strip():
        raise InputError(f"{at}document id {d.id!r} is blank; give a non-empty string")
    check_utf8(d.text, f"{at}document {d.id!r}: text")
    check_metadata(d.metadata, f"{at}document {d.id!r}: metadata")
    return d


def check_documents(docs: Iterable[Document], source: str = "corpus") -> list[Document]:
    """Materialise ``docs``; refuse non-Documents, duplicate ids, unstorable text or metadata, and nothing."""
    out: list[Document] = []
    seen: set[str] = set()
    if isinstance(docs, (str, bytes, dict, Document)):
        raise InputError(f"{source}: expected a list of Documents, got one {type(docs).__name__}")
    for i, d in enumerate(docs):
        if not isinstance(d, Document):
            raise InputError(
                f"{source}: item {i} is a {type(d).__name__}, not a Document; build one with "
                "Document(id, text, metadata), or document_from_record() for a BEIR-style dict"
            )
        check_document(d, source)
        if d.id in seen:
            raise InputError(f"{source}: duplicate document id {d.id!r}")
        seen.add(d.id)
        out.append(d)
    if not out:
        raise InputError(f"{source}: no documents found")
    return out


def read_corpus(path: str | Path, limit: int | None = None) -> list[Document]:
    """Read and check a whole corpus (see :func:`iter_corpus`), keeping the first ``limit`` documents."""
    if limit is not None and limit <= 0:
        raise InputError(f"limit={limit} must be a positive number of documents")
    docs = iter_corpus(path)
    if limit is not None:
        docs = (d for i, d in zip(range(limit), docs))
    return check_documents(docs, str(path))
