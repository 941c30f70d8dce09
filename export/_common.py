"""What the model's exporter (:mod:`export.to_onnx`) and the feature encoders' exporter
(:mod:`export._encoders`) share: the export error and int8 quantisation of a graph."""

from __future__ import annotations

from pathlib import Path

from mgsv_sk.errors import MGSVError

__all__ = ["ExportError", "quantize_int8"]


class ExportError(MGSVError, RuntimeError):
    """The exported graphs do not match the model (a frozen axis, a wrong output)."""


def quantize_int8(src: Path, dst: Path) -> None:
    """int8 dynamic quantisation of the MatMul/Gemm weights, per output channel
    (activations are quantised on the fly).

    Pre-processing first folds products of constant weights (X-Pool's W_o W_v, say) into
    one initializer: quantised as they are, such a MatMul gets a per-channel zero point that
    onnxruntime's MatMulInteger kernel rejects at run time. Its symbolic shape inference
    crashes on these graphs, so that step is skipped (ONNX shape inference still runs).
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = dst.with_name(dst.name + ".pre")
    try:
        quant_pre_process(src, pre, skip_symbolic_shape=True)
        quantize_dynamic(pre, dst, weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["MatMul", "Gemm"])
    finally:
        pre.unlink(missing_ok=True)
