"""Encoder + projection + L2 norm run by ONNX Runtime on CPU: the fast query path.

On 2 CPU cores, one query through torch's eager BERT costs about twice what the same
graph costs in ONNX Runtime (fused attention/LayerNorm/GELU kernels, no Python per
layer; eval/bench_query_encoding.py measures it). The graph is exported once per
checkpoint with torch's exporter and kept in a cache folder keyed by the weights and
the versions that made it. ``quantize=True`` adds ONNX Runtime's dynamic INT8
quantization of the weights: faster again but lossy, so only ever on request.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pooledir.errors import InputError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

#: ONNX opset of the export (ONNX Runtime ≥ 1.14 runs it)
OPSET = 17
#: ONNX Runtime's session option that lets idle intra-op threads busy-wait for the next run
SPINNING = "session.intra_op.allow_spinning"


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/pooledir/onnx`` (``~/.cache/pooledir/onnx``)."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pooledir" / "onnx"


def _require_onnxruntime() -> Any:
    """The onnxruntime module (typed at this boundary: its classes are built by pybind11), or an InputError."""
    try:
        import onnxruntime
    except ImportError:
        raise InputError(
            "the 'onnx' backends need ONNX Runtime, which is not installed: pip install 'pooledir[onnx]'"
        ) from None
    return onnxruntime


def _fingerprint(path: Path, quantize: bool) -> str:
    """Key of an exported graph: the checkpoint's files (name, size, mtime) and the exporting versions."""
    import onnxruntime
    import torch
    import transformers

    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".bin", ".json"))
    parts = [str(path.resolve()), torch.__version__, transformers.__version__, onnxruntime.__version__]
    parts += [f"{p.relative_to(path)}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files]
    parts.append(f"opset{OPSET}:int8={quantize}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:20]


def export_onnx(model: torch.nn.Module, projection: torch.nn.Module, out: Path) -> None:
    """Export ``normalize(projection(model(ids, mask)[0]))`` with dynamic batch and length axes, atomically."""
    import torch

    class Graph(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model, self.projection = model, projection

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            hidden = self.model(input_ids=input_ids, attention_mask=attention_mask)[0]
            return torch.nn.functional.normalize(self.projection(hidden), p=2, dim=2)

    ids = torch.full((2, 16), 100, dtype=torch.long)
    mask = torch.ones_like(ids)
    axes = {0: "batch", 1: "length"}
    tmp = out.with_name(out.name + f".{os.getpid()}.tmp")
    with torch.inference_mode(False), torch.no_grad():
        torch.onnx.export(
            Graph().eval(),
            (ids, mask),
            str(tmp),
            input_names=["input_ids", "attention_mask"],
            output_names=["vectors"],
            dynamic_axes={"input_ids": axes, "attention_mask": axes, "vectors": axes},
            opset_version=OPSET,
            dynamo=False,  # the TorchScript exporter: no onnxscript needed, dynamic axes as declared
        )
    _fsync_replace(tmp, out)


def _fsync_replace(tmp: Path, out: Path) -> None:
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, out)
    fd = os.open(out.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class OnnxRuntimeEncoder:
    """An ONNX Runtime session computing unit token vectors (B, L, dim) from ids and attention mask.

    Parameters
    ----------
    checkpoint_path
        The resolved checkpoint folder (for the cache key).
    model, projection
        The loaded torch modules to export on a cache miss.
    quantize
        Dynamic INT8 weights (lossy: vectors differ by up to ~0.1 per coordinate).
    threads
        ONNX Runtime intra-op threads (None: its default, one per physical core).
    cache_dir
        Where exported graphs are kept (default :func:`default_cache_dir`).
    """

    def __init__(
        self,
        checkpoint_path: Path,
        model: torch.nn.Module,
        projection: torch.nn.Module,
        quantize: bool = False,
        threads: int | None = None,
        cache_dir: Path | None = None,
    ) -> None:
        ort = _require_onnxruntime()
        cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        cache.mkdir(parents=True, exist_ok=True)
        key = _fingerprint(checkpoint_path, quantize)
        self.path = cache / f"{key}.onnx"
        if not self.path.is_file():
            self._build(checkpoint_path, model, projection, quantize)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads is not None:
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # idle pool threads sleep instead of spinning: on 2 shared cores a spinning pool took CPU from the search
        # that follows each query's encoding (same process, interleaved, 300 SciFact queries, load 6-7: encode
        # 19.0 -> 17.8 ms, encode + search 48.8 -> 44.5 ms p50, process CPU 39.2 -> 30.6 ms)
        options.add_session_config_entry(SPINNING, "0")
        self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        self.quantized = quantize

    def _build(
        self, checkpoint_path: Path, model: torch.nn.Module, projection: torch.nn.Module, quantize: bool
    ) -> None:
        log.info("exporting %s to ONNX (once; cached at %s)", checkpoint_path, self.path)
        if not quantize:
            export_onnx(model, projection, self.path)
            return
        from onnxruntime.quantization import QuantType, quantize_dynamic

        with tempfile.TemporaryDirectory(dir=self.path.parent) as tmp:
            fp32 = Path(tmp) / "fp32.onnx"
            export_onnx(model, projection, fp32)
            int8 = Path(tmp) / "int8.onnx"
            quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)
            _fsync_replace(int8, self.path)

    def __call__(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Unit token vectors (B, L, dim), float32, for int64 ids and attention mask (B, L)."""
        feeds = {"input_ids": ids.astype(np.int64, copy=False), "attention_mask": mask.astype(np.int64, copy=False)}
        vectors: np.ndarray = self.session.run(None, feeds)[0]
        return vectors
