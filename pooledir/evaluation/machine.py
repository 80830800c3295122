"""What a measurement ran on, in one shape for every result file and benchmark printout."""

from __future__ import annotations

import os
import platform


def machine_info() -> dict[str, str | None]:
    """``{"cpu": "<processor>, <N> cores", "gpu": <CUDA device name> or None}`` for this machine."""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores", "gpu": gpu}
