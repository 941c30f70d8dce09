"""Public path of :mod:`mgsv_sk.core.features` (the torch-free core): the same module object,
so ``import mgsv_sk.features`` and ``mgsv_sk.core.features`` are one implementation."""

import sys

from .core import features as _impl

sys.modules[__name__] = _impl
