"""The feature encoders on onnxruntime (no torch): graphs written by
:func:`export._encoders.export_encoders` (or ``export_onnx(..., encoders=...)``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from mgsv_sk.errors import ArtifactNotFoundError, InvalidInputError

__all__ = ["OrtEncoder"]


class OrtEncoder:
    """An encoder graph with one input (``inputs``: (batch, ...) float32) and one output
    (``embedding``: (batch, dim) float32), run ``batch_size`` rows at a time.

    Parameters
    ----------
    path : path
        The ``.onnx`` file.
    n_threads : int, optional
        onnxruntime threads (None: its default, all cores).
    batch_size : int
        Rows per run.
    """

    def __init__(self, path: str | os.PathLike[str], *, n_threads: int | None = None,
                 batch_size: int = 16, session_options: Any = None) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise ArtifactNotFoundError(f"no ONNX encoder at {self.path!s}; export one with "
                                    "export.to_onnx.export_onnx(..., encoders=...)")
        options = session_options or ort.SessionOptions()
        if n_threads is not None:
            options.intra_op_num_threads = int(n_threads)
        self.session = ort.InferenceSession(str(self.path), options,
                                            providers=["CPUExecutionProvider"])
        self._input = self.session.get_inputs()[0].name
        dim = self.session.get_outputs()[0].shape[-1]
        if not isinstance(dim, int):
            raise InvalidInputError(f"{self.path!s}: the embedding's last axis has no fixed size; "
                             "not an encoder graph written by mgsv_sk's exporter")
        self.dim = dim
        self.batch_size = batch_size
        self.name = self.path.name

    def mismatch(self, input_shape: tuple[int, ...] | None, dim: int | None) -> str | None:
        """How the graph differs from an encoder of ``input_shape`` (after the batch axis)
        and ``dim`` outputs, or None."""
        arg = self.session.get_inputs()[0]
        have = list(arg.shape)[1:]
        if input_shape is not None and (len(have) != len(input_shape) or any(
                isinstance(h, int) and h != w for h, w in zip(have, input_shape))):
            return f"takes inputs of shape {list(arg.shape)}, expected [batch, " \
                f"{', '.join(map(str, input_shape))}]"
        if arg.type != "tensor(float)":
            return f"takes {arg.type} inputs, expected float32"
        if dim is not None and self.dim != dim:
            return f"gives {self.dim}-d embeddings, expected {dim}"
        return None

    def encode(self, inputs: np.ndarray) -> np.ndarray:
        """(B, ...) float32 -> (B, dim) float32."""
        inputs = np.ascontiguousarray(inputs, dtype=np.float32)
        out = np.zeros((len(inputs), self.dim), np.float32)
        for lo in range(0, len(inputs), self.batch_size):
            out[lo: lo + self.batch_size] = self.session.run(
                None, {self._input: inputs[lo: lo + self.batch_size]})[0]
        return out

    def __repr__(self) -> str:
        return f"OrtEncoder({str(self.path)!r}, dim={self.dim})"
