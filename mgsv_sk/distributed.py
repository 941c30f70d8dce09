"""Public path of :mod:`mgsv_sk.train.distributed` (data-parallel training): the same
module object."""

import sys

from .train import distributed as _impl

sys.modules[__name__] = _impl
