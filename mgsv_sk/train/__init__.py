"""Training: the fit loop (``_training``), batching (``_batching``), device and precision
resolution (``_device``) and data-parallel training (``distributed``).

Owns everything that turns a validated frame and a feature source into trained MaDe
weights. May import torch, :mod:`mgsv_sk.core`, :mod:`mgsv_sk.nn` and the torch backend's
batched inference (:mod:`mgsv_sk._inference`, used for validation); never
:mod:`mgsv_sk.estimator`, :mod:`mgsv_sk.cli` or ``export``.
"""
