from __future__ import annotations

import os

from pooledir.evaluation import machine_info


def test_machine_info_shape():
    info = machine_info()
    assert set(info) == {"cpu", "gpu"}
    assert info["cpu"].endswith(f", {os.cpu_count()} cores")
