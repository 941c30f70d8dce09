"""Training: the fit loop (``_training``), batching (``_batching``) and data-parallel
training (``distributed``).

Owns everything that turns a validated frame and a feature source into trained MaDe
weights. May import torch, the torch-free layers, :mod:`mgsv_sk.nn` and
:mod:`mgsv_sk.infer` (device and precision, and the batched inference that validation
runs); never :mod:`mgsv_sk.estimators`, :mod:`mgsv_sk.cli` or ``export``.
"""

from mgsv_sk.train._fitted import FittedState

__all__ = ["FittedState"]
