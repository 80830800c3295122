"""Service settings, read from the environment (prefix ``POOLEDIR_``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from pooledir.encoder import check_backends


class Settings(BaseSettings):
    """Everything the service can be told; ``POOLEDIR_INDEXES='["/data/scifact"]'`` and so on."""

    model_config = SettingsConfigDict(env_prefix="POOLEDIR_")

    indexes: list[Path] = []
    #: where an index's checkpoint is when the path in its manifest is not on this machine (e.g. mounted elsewhere in a
    #: container); an index whose recorded checkpoint is here keeps it (pooledir.encoder.checkpoint_for_index)
    checkpoint: Path | None = None
    device: str = "auto"
    #: how queries are encoded: auto (onnx where ONNX Runtime is installed and the device is the CPU, else torch),
    #: torch, onnx (ONNX Runtime: the same vectors, faster on CPU) or onnx-int8 (lossy)
    query_backend: str = "auto"
    #: how upserted documents are encoded: torch or onnx (lossless only)
    document_backend: str = "torch"
    api_key: SecretStr | None = None
    max_k: int = 1000
    max_batch_queries: int = 64
    max_batch_documents: int = 256
    max_query_chars: int = 2_000
    max_document_chars: int = 100_000
    max_body_bytes: int = 8 * 1024 * 1024
    #: results one search request may return in all (queries x k), and with ``with_text``
    max_results: int = 10_000
    max_text_results: int = 1_000
    #: characters of document text one search response may carry
    max_response_text_chars: int = 4_000_000
    #: fold the sqlite WAL into the database after this many writes of one worker (0: leave it to sqlite)
    wal_checkpoint_every: int = 100
    # micro-batching of concurrent queries into one encoder call
    batch_window_ms: float = 2.0
    micro_batching: bool = True

    @model_validator(mode="after")
    def _backends_known(self) -> Settings:
        check_backends(self.query_backend, self.document_backend)  # the library's rule; an InputError is a ValueError
        return self
