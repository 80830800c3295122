"""What a loaded checkpoint is, whatever its layout: the encoding settings and the loaded parts.

Both loaders (colbert-ai's layout in :mod:`pooledir.checkpoint`, PyLate's in
:mod:`pooledir.checkpoint_pylate`) build these, so they live below both.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger("pooledir.checkpoint")  # the loaders' logger, where this warning was logged before


@dataclass(frozen=True)
class ColBERTSettings:
    """The part of colbert-ai's ColBERTConfig that changes how text is encoded.

    ``query_augmentation`` and ``markers`` are pooledir's own switches (colbert-ai
    always does both): a checkpoint trained as ColBERT keeps them on; a zero-shot
    encoder that never saw [MASK] padding or [Q]/[D] markers may do better without.
    """

    dim: int = 128
    doc_maxlen: int = 180
    query_maxlen: int = 32
    mask_punctuation: bool = True
    attend_to_mask_tokens: bool = False
    query_token_id: str = "[unused0]"
    doc_token_id: str = "[unused1]"
    query_augmentation: bool = True
    markers: bool = True
    #: ``"colbert-ai"``: the marker overwrites a ". " placeholder; ``"pylate"``: the prefix token is inserted
    layout: str = "colbert-ai"
    #: tokens dropped from documents (PyLate's skiplist); None: colbert-ai's first token of each punctuation mark
    skiplist_words: tuple[str, ...] | None = None
    #: lowercase texts before tokenizing (sentence-transformers' ``do_lower_case``)
    do_lower_case: bool = False

    @classmethod
    def from_metadata(cls, path: Path, dim: int) -> ColBERTSettings:
        """Read ``artifact.metadata`` (colbert-ai writes the config at top level or under ``config``)."""
        meta = path / "artifact.metadata"
        if not meta.is_file():
            log.warning("%s has no artifact.metadata; using colbert-ai's defaults", path)
            return cls(dim=dim)
        data = json.loads(meta.read_text())
        data = data.get("config", data)
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        known["dim"] = dim  # the weights are the truth
        return cls(**known)


@dataclass
class LoadedCheckpoint:
    """What an encoder needs from a checkpoint folder, whatever its layout."""

    model: torch.nn.Module  # a transformers AutoModel, float32, eval mode
    projection: torch.nn.Module  # from hidden size to ``settings.dim``
    tokenizer: PreTrainedTokenizerBase
    settings: ColBERTSettings
