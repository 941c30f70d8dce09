"""Public path of :mod:`mgsv_sk.core.spans` (the torch-free core): the same module object,
so ``import mgsv_sk.spans`` and ``mgsv_sk.core.spans`` are one implementation."""

import sys

from .core import spans as _impl

sys.modules[__name__] = _impl
