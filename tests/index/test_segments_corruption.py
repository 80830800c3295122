"""Moved to tests/index/test_segments.py (the mirror of pooledir/index/segments.py).

Kept only for the helpers tests/test_cli.py and tests/index/test_codecs.py import from here (edited on other
branches); drop this file once they import ``tests.index.test_segments``.
"""

from tests.index.test_segments import format2, rot, segment_file, snapshot_of

__all__ = ["format2", "rot", "segment_file", "snapshot_of"]
