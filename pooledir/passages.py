"""Long documents as overlapping passages: indexed under the document's id, scored by the best passage.

An encoder keeps a document's first ``doc_maxlen`` tokens. With
``IndexConfig.passage_stride`` set, :class:`~pooledir.pooled_index.PooledIndex`
splits a longer document into windows of that many tokens (the special tokens
left out), one starting every ``passage_stride`` tokens, so the windows overlap
when the stride is shorter than a window. Window edges are moved back to word
starts, so a passage's text tokenizes as it did inside the document.

How they are stored: a document that fits is stored as it is. A longer document
``x`` becomes the rows ``x#p0``, ``x#p1``, ... (ids ending in ``#p<number>`` are
therefore refused in such an index). Each row holds its passage's vectors and
the document's metadata plus ``parent_id``, ``passage`` (its number) and
``span`` (its characters in the document's text); ``x#p0`` also holds
``n_passages`` and, as its text, the **whole document**, so ``get("x")`` returns
the document unchanged; the other rows store an empty text (their passage is
``text[span[0]:span[1]]``). Search ranks each document by its best passage,
``get`` and ``delete`` take the document's id (a passage id is refused by every
write), and adding ``x`` again replaces all of its passages.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Protocol

import numpy as np

from pooledir.corpus import Document
from pooledir.errors import DocumentNotFoundError, InputError
from pooledir.search import Hit

if TYPE_CHECKING:
    from pooledir.checkpoint_settings import ColBERTSettings
    from pooledir.search import SearchParams
    from pooledir.store import DocStore

#: metadata keys a passage row adds to its document's metadata
PASSAGE_KEYS = ("parent_id", "passage", "span", "n_passages")
_PASSAGE_ID = re.compile(r"#p\d+\Z")
_RUN_START = re.compile(r"(?<=\S)\s")
#: characters tokenized at once when splitting, so a huge document costs bounded tokenizer memory
_CHUNK_CHARS = 1 << 16


class PassageEncoder(Protocol):
    """What splitting needs from an encoder (:class:`~pooledir.encoder.ColBERTEncoder` is one)."""

    settings: ColBERTSettings

    def text_tokens_per_document(self) -> int:
        """Text tokens one encoded document holds."""
        ...

    def token_offsets(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """Per token of ``text``: (start, end) characters and word number (-1: none)."""
        ...


#: search_rows(params) -> one hit per stored row (document or passage), best first, per query
SearchRows = Callable[["SearchParams"], list[list[Hit]]]
#: get(id) -> the stored document (or passage row) ``id``; raises DocumentNotFoundError
GetDocument = Callable[[str], Document]


def is_passage_id(id: str) -> bool:
    """Whether ``id`` names a passage row (``x#p3``) rather than a document."""
    return _PASSAGE_ID.search(id) is not None


def check_not_passage_ids(ids: Sequence[str]) -> None:
    """Raise :class:`InputError` for an id shaped like a passage's (``x#p3``): writes take whole documents.

    Deleting or replacing one passage would leave its document half there (its other passages kept,
    its id no longer found), so every write path (add, upsert, delete) refuses these ids.
    """
    for i in ids:
        if is_passage_id(i):
            raise InputError(
                f"id {i!r} ends like a passage id (#p<number>), which this index keeps for the passages of long "
                f"documents: add, replace or delete a document by its own id (here {parent_id(i)!r}), "
                "and give no document an id that ends so"
            )


def parent_id(id: str) -> str:
    """The document a row belongs to: ``x#p3`` -> ``x``; a document's own id is its own parent."""
    return _PASSAGE_ID.sub("", id)


def window_tokens(encoder: PassageEncoder) -> int:
    """Text tokens one passage holds: ``doc_maxlen`` less the special tokens the encoder adds."""
    return encoder.text_tokens_per_document()


def default_stride(encoder: PassageEncoder) -> int:
    """Half a window: every token is in two passages, one of which holds it away from the edge."""
    return max(1, window_tokens(encoder) // 2)


def check_stride(stride: int, encoder: PassageEncoder) -> None:
    """Raise :class:`InputError` when a stride would skip tokens between passages."""
    window = window_tokens(encoder)
    if stride > window:
        raise InputError(
            f"passage_stride={stride} is larger than the {window} tokens of one passage "
            f"(doc_maxlen={encoder.settings.doc_maxlen} less special tokens), so text between passages would "
            f"be lost; pass at most {window}, e.g. {max(1, window // 2)} for passages that overlap by half"
        )


def split_documents(docs: Sequence[Document], encoder: PassageEncoder, stride: int) -> tuple[list[Document], list[str]]:
    """The rows to store for ``docs`` and the text to encode for each row (see the module docstring)."""
    window = window_tokens(encoder)
    rows: list[Document] = []
    texts: list[str] = []
    check_not_passage_ids([d.id for d in docs])
    for d in docs:
        spans = passage_spans(d.text, encoder, window, stride)
        if len(spans) == 1:
            rows.append(d)
            texts.append(d.text)
            continue
        for j, (start, end) in enumerate(spans):
            meta = {**d.metadata, "parent_id": d.id, "passage": j, "span": [start, end]}
            if j == 0:
                meta["n_passages"] = len(spans)
            rows.append(Document(f"{d.id}#p{j}", d.text if j == 0 else "", meta))
            texts.append(d.text[start:end])
    return rows, texts


def passage_spans(text: str, encoder: PassageEncoder, window: int, stride: int) -> list[tuple[int, int]]:
    """Character spans of the passages of ``text``; one span, the whole text, when it fits one window."""
    starts, ends, words = _token_offsets(text, encoder)
    n = len(starts)
    if n <= window:
        return [(0, len(text))]
    spans: list[tuple[int, int]] = []
    first, previous = 0, -1
    while True:
        a = first
        while a > previous + 1 and words[a - 1] == words[a]:  # start at the first token of a word
            a -= 1
        previous = a
        b = min(a + window, n)
        if b < n:
            end = b
            while end > a and words[end - 1] == words[end]:  # end after the last token of a word
                end -= 1
            b = end if end > a else b  # a word longer than a window is cut
        spans.append((int(starts[a]), int(ends[b - 1])))
        if b >= n:
            return spans
        first += stride


def _token_offsets(text: str, encoder: PassageEncoder) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per token of ``text`` (no special tokens): start and end character, and a word number."""
    starts, ends, words = [], [], []
    pos, word_base = 0, 0
    while pos < len(text):
        stop = len(text)
        if stop - pos > 2 * _CHUNK_CHARS:  # cut before a whitespace run, where tokens do not cross
            run = _RUN_START.search(text, pos + _CHUNK_CHARS, pos + 2 * _CHUNK_CHARS)
            stop = run.start() if run else pos + _CHUNK_CHARS
        offsets, w = encoder.token_offsets(text[pos:stop])
        starts.append(offsets[:, 0] + pos)
        ends.append(offsets[:, 1] + pos)
        words.append(w + word_base)
        word_base += int(w.max()) + 1 if len(w) else 0
        pos = stop
    if not starts:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int64)
    return np.concatenate(starts), np.concatenate(ends), np.concatenate(words)


def stored_ids(store: DocStore, ids: Sequence[str]) -> list[str]:
    """The rows of ``ids``: a stored row's own id, a split document's passage ids; unknown ids as given.

    A split document's rows are every stored ``<id>#p<number>`` (a range of the id index), not
    ``n_passages`` of them: a document one of whose passages was deleted alone (which older versions
    allowed) is still deleted whole. A passage id raises :class:`InputError` (see :func:`check_not_passage_ids`).
    """
    check_not_passage_ids(ids)
    found = store.lookup(list(ids))
    out: list[str] = []
    for i in ids:
        passages = [] if i in found else [p for p in store.ids_starting_with(f"{i}#p") if parent_id(p) == i]
        out += passages or [i]
    return out


def count_documents(store: DocStore, rows: int) -> int:
    """The documents ``rows`` stored rows hold: each split document's passage rows count as one document."""
    passages = [i for i in store.ids_glob("*#p[0-9]*") if is_passage_id(i)]
    return rows - len(passages) + len({parent_id(i) for i in passages})


def parent_document(get: GetDocument, id: str) -> Document:
    """The whole document ``id`` that was split into passages (its first passage row holds it)."""
    if not is_passage_id(id):
        try:
            first = get(f"{id}#p0")
        except DocumentNotFoundError:
            pass
        else:
            meta = {k: v for k, v in first.metadata.items() if k not in PASSAGE_KEYS}
            return Document(id, first.text, meta)
    raise DocumentNotFoundError(f"unknown document id {id!r}")


def search_parents(
    search_rows: SearchRows, n: int, get: GetDocument, params: SearchParams, with_text: bool
) -> list[list[Hit]]:
    """Rank documents by their best passage, among the ``n`` rows ``search_rows`` ranks.

    A document's passages compete for the same candidate slots, so each round asks for more rows
    and more candidates per query token (x4, x16, x64, then every row, ranked exhaustively) until
    every query has ``k`` documents: each gets ``min(k, documents that match)``.
    """
    for factor in (4, 16, 64, None):
        rows = n if factor is None else min(n, factor * params.k)
        wider = replace(params, k=rows, candidates_per_token=(factor or 64) * params.candidates_per_token)
        hits = search_rows(wider)
        best = [_best_per_parent(h, params.k) for h in hits]
        if rows >= n or all(len(b) >= params.k for b in best):
            break
    if not with_text:
        return best
    out = []
    for ranked in best:
        docs = [get(h.id) for h in ranked]
        out.append([Hit(h.id, h.score, d.text, d.metadata) for h, d in zip(ranked, docs)])
    return out


def _best_per_parent(hits: Sequence[Hit], k: int) -> list[Hit]:
    """The first (best) hit of each document, as a hit on the document; at most ``k``."""
    seen: dict[str, Hit] = {}
    for h in hits:
        p = parent_id(h.id)
        if p not in seen:
            seen[p] = replace(h, id=p)
            if len(seen) == k:
                break
    return list(seen.values())
