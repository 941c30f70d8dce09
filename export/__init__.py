"""Deployment side of mgsv_sk: the exporter (``to_onnx``, ``_graphs``: torch + onnx, fitted
MGSVGrounder -> checksummed bundle), the bundle contract (``manifest``) and the
onnxruntime backend (``runtime.OnnxGrounder``, plus ``dask`` for serving partitions).

``runtime``, ``manifest`` and ``dask`` import only numpy, pandas, onnxruntime and
the torch-free layers of mgsv_sk (``data``, ``search``, ``grounding``; never torch);
the exporter may import :mod:`mgsv_sk.estimators` and :mod:`mgsv_sk.nn`. Nothing here
imports :mod:`mgsv_sk.cli` (the CLI calls export).
"""
