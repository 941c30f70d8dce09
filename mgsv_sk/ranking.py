"""Public path of :mod:`mgsv_sk.infer.catalogue` (the torch backend's catalogue): the same
module object, so ``mgsv_sk.ranking.MusicCatalogue`` keeps working."""

import sys

from .infer import catalogue as _impl

sys.modules[__name__] = _impl
