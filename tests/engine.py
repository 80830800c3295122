"""The one place tests reach under :class:`~pooledir.pooled_index.PooledIndex`: white-box tests of the storage engine.

Everything else reads an index through the facade's public queries (``stats()``, ``doc_store``, ``quantizer``,
``row_ids()``); ``tests/test_package.py`` checks that no other module reads the engine off a facade.
"""

from __future__ import annotations

from pooledir.index.folder import IndexFolder
from pooledir.pooled_index import PooledIndex


def engine(index: PooledIndex) -> IndexFolder:
    """The live storage engine (folder, segments, snapshot, commit protocol) under ``index``."""
    return index._folder
