"""Document upsert, delete and lookup.

Plain ``def`` routes: they wait on the index's locks, so FastAPI runs them in
its thread pool and the event loop (health checks included) never waits.
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException
from starlette.convertors import Convertor, register_url_convertor

from pooledir.corpus import Document
from pooledir.errors import InputError
from pooledir.service.deps import IndexDep, SettingsDep
from pooledir.service.schemas import DeleteRequest, DeleteResponse, DocumentOut, UpsertRequest, UpsertResponse

router = APIRouter(prefix="/indexes/{name}/documents", tags=["documents"])


class DocIdConvertor(Convertor[str]):
    """Any id, '/' and newlines included: starlette's ``path`` (``.*``) stops at a newline and drops a final one."""

    regex = r"[\s\S]+"

    def convert(self, value: str) -> str:
        """The id as given."""
        return value

    def to_string(self, value: str) -> str:
        """The id as given."""
        return value


register_url_convertor("doc_id", DocIdConvertor())


@router.post("", response_model=UpsertResponse)
def upsert(req: UpsertRequest, handle: IndexDep, settings: SettingsDep) -> UpsertResponse:
    """Add or replace documents by id; durable on disk before the answer."""
    if len(req.documents) > settings.max_batch_documents:
        raise HTTPException(
            413,
            f"{len(req.documents)} documents in one request; at most {settings.max_batch_documents}",
        )
    docs = []
    for d in req.documents:
        if len(d.text) + len(d.title or "") > settings.max_document_chars:
            raise InputError(f"document {d.id!r} has more than {settings.max_document_chars} characters")
        docs.append(Document.from_parts(d.id, d.text, d.title, d.metadata))
    n = handle.upsert(docs)
    return UpsertResponse(upserted=n, documents=handle.read(len))


@router.delete("", response_model=DeleteResponse)
def delete(req: DeleteRequest, handle: IndexDep) -> DeleteResponse:
    """Delete documents by id; any unknown id fails the whole request (404) before anything is deleted."""
    n = handle.delete(req.ids)
    return DeleteResponse(deleted=n, documents=handle.read(len))


@router.get("/{doc_id:doc_id}", response_model=DocumentOut)
def get_document(doc_id: str, handle: IndexDep) -> DocumentOut:
    """One stored document; ids may contain ``/`` (a folder of .txt files makes such ids)."""
    doc = handle.read(lambda index: index.get(doc_id))
    return DocumentOut(id=doc.id, text=doc.text, metadata=doc.metadata)
