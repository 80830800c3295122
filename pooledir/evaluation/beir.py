"""BEIR datasets: queries, qrels, a (sampled) split, and fetching a dataset when it is not on disk."""

from __future__ import annotations

import csv
import json
import shutil
import tempfile
import urllib.request
import zipfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pooledir.corpus import Document, read_corpus
from pooledir.errors import InputError

BEIR_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/{name}.zip"


def load_queries(path: str | Path) -> dict[str, str]:
    """``queries.jsonl`` of a BEIR folder (or the file itself) as {query id: text}."""
    path = Path(path)
    fp = path / "queries.jsonl" if path.is_dir() else path
    if not fp.is_file():
        raise InputError(f"queries not found: {fp}")
    out: dict[str, str] = {}
    with fp.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                out[str(rec["_id"])] = rec["text"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise InputError(f"{fp}:{lineno}: malformed query line ({type(e).__name__}: {e})") from None
    return out


def load_qrels(path: str | Path, split: str = "test") -> dict[str, dict[str, int]]:
    """``qrels/<split>.tsv`` as {query id: {doc id: relevance}}, keeping every judgment of a query."""
    path = Path(path)
    fp = path / "qrels" / f"{split}.tsv" if path.is_dir() else path
    if not fp.is_file():
        raise InputError(f"qrels not found: {fp}")
    qrels: dict[str, dict[str, int]] = defaultdict(dict)
    with fp.open(encoding="utf-8", newline="") as f:
        for lineno, row in enumerate(csv.reader(f, delimiter="\t"), 1):
            if not row or (lineno == 1 and row[0] in ("query-id", "qid")):
                continue
            try:
                qid, did, rel = row[0], row[1], int(row[2])
            except (IndexError, ValueError):
                raise InputError(f"{fp}:{lineno}: expected 'query-id<TAB>corpus-id<TAB>score', got {row!r}") from None
            qrels[qid][did] = rel
    return dict(qrels)


def download_beir(name: str, dest: str | Path) -> Path:
    """Download and unpack BEIR dataset ``name`` into ``dest/name``; offline, say how to point at a folder."""
    dest = Path(dest)
    target = dest / name
    if (target / "corpus.jsonl").is_file():
        return target
    url = BEIR_URL.format(name=name)
    with tempfile.TemporaryDirectory() as tmp:
        zpath = Path(tmp) / f"{name}.zip"
        try:
            with urllib.request.urlopen(url, timeout=30) as r, open(zpath, "wb") as f:
                shutil.copyfileobj(r, f)
        except OSError as e:
            raise InputError(
                f"could not download {url} ({e}); offline, use a local BEIR folder instead "
                "(corpus.jsonl, queries.jsonl, qrels/test.tsv)"
            ) from None
        with zipfile.ZipFile(zpath) as z:
            z.extractall(tmp)
        dest.mkdir(parents=True, exist_ok=True)
        shutil.move(str(Path(tmp) / name), target)
    return target


@dataclass
class BeirData:
    """A (sampled) BEIR split: documents, the judged queries and their qrels."""

    name: str
    documents: list[Document]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]


def load_beir(
    dataset: Path,
    split: str = "test",
    corpus_sample: int | None = None,
    queries_sample: int | None = None,
    seed: int = 0,
) -> BeirData:
    """Load a BEIR folder, keeping judged queries; samples keep every judged document."""
    dataset = Path(dataset)
    for part in ("corpus.jsonl", "queries.jsonl", f"qrels/{split}.tsv"):
        if not (dataset / part).is_file():
            raise InputError(f"{dataset} is not a BEIR dataset folder: {part} is missing")
    qrels = load_qrels(dataset, split)
    queries = load_queries(dataset)
    unknown = sorted(set(qrels) - set(queries))
    if unknown:
        raise InputError(
            f"{dataset}/qrels/{split}.tsv judges {len(unknown)} query id(s) missing from queries.jsonl, "
            f"e.g. {unknown[0]!r}"
        )
    if not qrels:
        raise InputError(f"{dataset}/qrels/{split}.tsv has no judgments")
    rng = np.random.default_rng(seed)
    qids = sorted(qrels)
    if queries_sample is not None and queries_sample < len(qids):
        qids = sorted(rng.choice(qids, queries_sample, replace=False).tolist())
    documents = read_corpus(dataset)
    if corpus_sample is not None and corpus_sample < len(documents):
        judged = {d for q in qids for d in qrels[q]}
        keep = [i for i, d in enumerate(documents) if d.id in judged]
        rest = [i for i, d in enumerate(documents) if d.id not in judged]
        extra = max(0, corpus_sample - len(keep))
        keep += rng.choice(rest, min(extra, len(rest)), replace=False).tolist()
        documents = [documents[i] for i in sorted(keep)]
    return BeirData(dataset.name, documents, {q: queries[q] for q in qids}, {q: qrels[q] for q in qids})
