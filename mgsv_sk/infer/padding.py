"""Variable-length feature arrays as padded tensors (the search's padding, in torch)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from mgsv_sk.search import pad

__all__ = ["pad_stack"]


def pad_stack(arrays: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad variable-length [T_i, D] arrays to [n, max T_i, D] plus a bool mask [n, max T_i]
    (the search's :func:`~mgsv_sk.search.catalogue.pad`, as tensors)."""
    arrays = list(arrays)
    out, mask = pad(arrays, arrays[0].shape[1])
    return torch.from_numpy(out), torch.from_numpy(mask)
