"""Export the feature encoders (CLIP image, AST) to ONNX, fp32 and optionally int8, and
check each against torch: cosine >= 0.9999 per embedding (fp32).

Graphs: one input ``inputs`` (``batch`` x the encoder's input shape), one output
``embedding`` (``batch`` x dim); :class:`mgsv_sk.extract.onnx_encoders.OrtEncoder` runs them.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mgsv_sk.errors import InvalidInputError

from ._common import ExportError, quantize_int8

__all__ = ["ENCODER_INPUTS", "MIN_COSINE", "cosines", "export_encoders"]

#: Input shape (after the batch axis) of each encoder role.
ENCODER_INPUTS: dict[str, tuple[int, ...]] = {"video": (3, 224, 224), "music": (1024, 128)}
#: The fp32 graph's embeddings must have at least this cosine with torch's.
MIN_COSINE = 0.9999


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two (n, d) arrays."""
    num = (a * b).sum(1)
    return np.asarray(num / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1),
                                       1e-12))


def _export_one(encoder: Any, role: str, path: Path, opset: int) -> None:
    import torch

    module = encoder.module()
    model = getattr(encoder, "model", None)
    if model is not None and hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("eager")  # one plain attention graph for ONNX
    example = torch.zeros((2, *ENCODER_INPUTS[role]))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), path, dynamo=False, opset_version=opset,
                          input_names=["inputs"], output_names=["embedding"],
                          dynamic_axes={"inputs": {0: "batch"}, "embedding": {0: "batch"}},
                          do_constant_folding=True)


def export_encoders(encoders: Mapping[str, Any], folder: str | Path, *, opset: int = 17,
                    quantize: bool = False, check: bool = True) -> dict[str, Any]:
    """Write ``graphs/<role>_encoder.onnx`` (+ ``.int8.onnx``) for each of
    ``encoders`` ({"video": ClipImageEncoder, "music": AstEncoder}) under ``folder``.

    Returns
    -------
    dict
        The manifest's ``encoders`` entry: per role ``name``, ``dim``, ``input_shape``,
        ``files`` ({precision: bundle-relative path}) and ``min_cosine`` (fp32 vs torch).
    """
    folder = Path(folder)
    (folder / "graphs").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    out: dict[str, Any] = {}
    for role, encoder in encoders.items():
        if role not in ENCODER_INPUTS:
            raise InvalidInputError(f"encoder roles are 'video' and 'music', got {role!r}")
        rel = f"graphs/{role}_features.onnx"
        _export_one(encoder, role, folder / rel, opset)
        files = {"fp32": rel}
        worst = 1.0
        if check:
            from mgsv_sk.extract.onnx_encoders import OrtEncoder

            x = rng.normal(size=(3, *ENCODER_INPUTS[role])).astype(np.float32)
            worst = float(cosines(OrtEncoder(folder / rel).encode(x), encoder.encode(x)).min())
            if worst < MIN_COSINE:
                raise ExportError(f"the ONNX {role} encoder differs from torch: cosine "
                                  f"{worst:.6f} < {MIN_COSINE}")
        if quantize:
            files["int8"] = f"graphs/{role}_features.int8.onnx"
            quantize_int8(folder / rel, folder / files["int8"])
        out[role] = {"name": str(encoder.name), "dim": int(encoder.dim),
                     "input_shape": list(ENCODER_INPUTS[role]), "files": files,
                     "min_cosine": worst}
    return out
