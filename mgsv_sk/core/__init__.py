"""The torch-free core: numpy and pandas only, shared by the torch backend
(:class:`mgsv_sk.MGSVGrounder`) and the onnxruntime backend (``export.runtime``).

May import numpy, pandas and the standard library, never torch, ``mgsv_sk.nn`` or anything
above it.
"""
