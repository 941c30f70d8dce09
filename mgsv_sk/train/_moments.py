"""The training features' centre and spread, which the encoders standardise their input
with (:meth:`mgsv_sk.nn.encoders.TemporalEncoder.set_input_moments`).

Each dimension is centred on its mean, and every dimension is divided by one factor, which
brings the median dimension's standard deviation to :data:`TARGET_STD`. One factor, not one
per dimension: the features' geometry (a CLIP embedding's few large dimensions, say) is
kept, and only their offset and overall scale, which depend on the extractor, are taken
out. Measured on the quick configuration of ``examples/quickstart.py``, three seeds: a
factor per dimension lowered R@1 / mIoU by about 0.01 against the features as they come;
one factor to a spread of 2 matched or beat them (figures: ``docs/benchmarks.md``,
"Features at another offset and scale").

Computed once per fit, before training, from every valid row (frame or snippet) of up to
:data:`MOMENT_ITEMS` videos and as many tracks of the training split (a seeded sample
of them beyond that).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mgsv_sk.data.features import FeatureSource

__all__ = ["MOMENT_ITEMS", "TARGET_STD", "FeatureMoments", "feature_moments"]

#: Videos (and tracks) whose rows the moments are computed from.
MOMENT_ITEMS = 4096
#: The median dimension's standard deviation after standardisation: the spread of the
#: synthetic features the defaults were chosen on (1.8 music, 2.8 video); 1 measured lower.
TARGET_STD = 2.0
#: Items read at once (bounds the memory of the pass: 64 x 96 x 768 float64 = 38 MB).
_READ = 64

FeatureMoments = tuple[np.ndarray, np.ndarray]


def _sample(ids: Sequence[str], seed: int) -> list[str]:
    unique = list(dict.fromkeys(ids))
    if len(unique) <= MOMENT_ITEMS:
        return unique
    picked = np.random.default_rng(seed).choice(len(unique), MOMENT_ITEMS, replace=False)
    return [unique[i] for i in np.sort(picked)]


def feature_moments(source: FeatureSource, ids: Sequence[str], kind: str,
                    seed: int) -> FeatureMoments:
    """The (mean, scale) per dimension (float32) that standardise the rows of the ``kind``
    ("video" or "music") features of ``ids``: (x - mean) / scale. ``scale`` is one value,
    the median dimension's standard deviation over :data:`TARGET_STD` (1 where no
    dimension varies)."""
    items = _sample(ids, seed)
    read = source.videos if kind == "video" else source.musics
    count, mean, square = 0, None, None  # running mean and sum of squared deviations
    for lo in range(0, len(items), _READ):
        rows = np.concatenate([np.asarray(a, np.float64) for a in read(items[lo: lo + _READ])])
        n = len(rows)
        if n == 0:
            continue
        part_mean = rows.mean(axis=0)
        part_square = ((rows - part_mean) ** 2).sum(axis=0)
        if mean is None or square is None:
            count, mean, square = n, part_mean, part_square
            continue
        # Chan et al.'s merge: stable where the features' mean is large against their spread
        delta = part_mean - mean
        total = count + n
        mean = mean + delta * (n / total)
        square = square + part_square + delta**2 * (count * n / total)
        count = total
    if mean is None or square is None:
        raise ValueError(f"no {kind} feature rows to standardise with")
    std = np.sqrt(square / count)
    spread = float(np.median(std))
    if not spread > 0:  # most dimensions constant: centre, do not scale by ~0
        spread = float(std.max(initial=0.0)) or TARGET_STD
    scale = np.full_like(mean, spread / TARGET_STD)
    return mean.astype(np.float32), scale.astype(np.float32)
