"""Public path of :mod:`mgsv_sk.core.scoring` (the torch-free core): the same module object,
so ``import mgsv_sk.scoring`` and ``mgsv_sk.core.scoring`` are one implementation."""

import sys

from .core import scoring as _impl

sys.modules[__name__] = _impl
