"""Which device pooledir computes on: one rule for the encoder, pooling and FAISS.

``"auto"`` means CUDA when torch sees a GPU, else the CPU; ``"cpu"``,
``"cuda"`` and ``"cuda:N"`` are taken as given, but CUDA without a GPU is
refused with the fix. FAISS runs on a GPU only where the device is CUDA *and*
the faiss build has GPU support (faiss-gpu; faiss-cpu is the default install).
"""

from __future__ import annotations

import re

from pooledir.errors import InputError

_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


def resolve_device(device: str) -> str:
    """``"auto"`` → ``"cuda"`` when torch sees a GPU, else ``"cpu"``; check any other value.

    Raises :class:`InputError` for an unknown device or for CUDA when torch sees no GPU.
    """
    if not isinstance(device, str) or not _DEVICE.fullmatch(device):
        raise InputError(f"device={device!r} is not one of 'auto', 'cpu', 'cuda', 'cuda:N'")
    if device == "cpu":
        return device  # no torch import: opening an index on the CPU stays cheap
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not torch.cuda.is_available():
        raise InputError(
            f"device={device!r} but torch sees no CUDA GPU; use device='cpu' or 'auto', "
            "or install a CUDA build of torch"
        )
    index = int(device.partition(":")[2] or 0)
    if index >= torch.cuda.device_count():
        n = torch.cuda.device_count()
        raise InputError(f"device={device!r} but torch sees {n} GPU(s); use one of cuda:0 to cuda:{n - 1}")
    return device


def use_gpu(device: str) -> bool:
    """True when ``device`` resolves to CUDA (``"auto"`` on a machine without a GPU is the CPU).

    Raises :class:`InputError` as :func:`resolve_device` does (CUDA asked for without a GPU).
    """
    return resolve_device(device) != "cpu"


def faiss_gpu_available() -> bool:
    """True when this faiss build has GPU support and sees a GPU."""
    import faiss

    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
