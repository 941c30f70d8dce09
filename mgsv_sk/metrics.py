"""Public path of :mod:`mgsv_sk.core.metrics` (the torch-free core): the same module object,
so ``import mgsv_sk.metrics`` and ``mgsv_sk.core.metrics`` are one implementation."""

import sys

from .core import metrics as _impl

sys.modules[__name__] = _impl
