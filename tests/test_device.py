from __future__ import annotations

import numpy as np
import pytest
import torch

from pooledir.device import faiss_gpu_available, resolve_device
from pooledir.errors import InputError

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU answers")


def test_cpu_and_auto():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("bad", ["gpu", "CPU", "cuda:", "cuda:x", "mps", "", 0, None])
def test_unknown_devices_are_refused_with_the_choices(bad):
    with pytest.raises(InputError, match=r"is not one of 'auto', 'cpu', 'cuda', 'cuda:N'"):
        resolve_device(bad)


@no_cuda
def test_cuda_without_a_gpu_says_the_fix():
    for device in ("cuda", "cuda:1"):
        with pytest.raises(InputError, match=f"device='{device}' but torch sees no CUDA GPU; use device='cpu'"):
            resolve_device(device)
    assert not faiss_gpu_available()


@no_cuda
def test_every_user_of_a_device_shares_the_rule(tiny_ckpt, tmp_path):
    """The encoder, pooling and an index refuse CUDA alike, and all turn 'auto' into the device in use."""
    from pooledir.encoder import ColBERTEncoder
    from pooledir.pooled_index import IndexConfig, PooledIndex
    from pooledir.pooling import pool_embeddings

    x = np.eye(4, 8, dtype=np.float32)
    for call in (
        lambda: ColBERTEncoder(tiny_ckpt, device="cuda"),
        lambda: pool_embeddings([x], 2, device="cuda"),
        lambda: PooledIndex.create(tmp_path / "a", tiny_ckpt, IndexConfig(backend="flat"), device="cuda"),
    ):
        with pytest.raises(InputError, match="torch sees no CUDA GPU"):
            call()
    assert ColBERTEncoder(tiny_ckpt, device="auto").device == "cpu"
    with PooledIndex.create(tmp_path / "b", tiny_ckpt, IndexConfig(backend="flat"), device="auto") as idx:
        assert idx.device == "cpu"
