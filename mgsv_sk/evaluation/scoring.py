"""Scorers of the MGSV protocol for scikit-learn model selection.

A scorer is ``scorer(estimator, X, y=None) -> float`` (greater is better), reading the
ground truth from ``X``'s columns (``music_id``, ``music_start``, ``music_end``,
``music_total_duration``). Retrieval is scored as the protocol does: against the
distinct tracks of ``X`` itself (the split's gallery), not the estimator's catalogue.

Several metrics from one prediction pass:

- ``scoring=protocol_scorer(["miou", "r1", "mor1@0.5"])``: one callable returning a dict
  (scikit-learn accepts it), ``refit="miou"``;
- ``scoring={"miou": get_scorer("miou"), "r1": get_scorer("r1")}`` also runs the model
  once: scorers share the last prediction of a fitted estimator on the same ``X`` (an
  ``X`` edited in place, a refit or ``set_params`` is predicted again).

=================  =====================================================
name               metric
=================  =====================================================
miou               SmG mean IoU
iou@0.3/0.5/0.7    SmG fraction of rows with IoU > θ
r1 ... r100        V2MR recall at k (k = 1, 5, 10, 25, 50, 100)
mrr                mean reciprocal rank
neg_median_rank    minus MedianR (greater is better)
neg_mean_rank      minus MeanR
mor{k}@{θ}         MsG: true track in the top k and IoU > θ (k 1/10/100, θ 0.5/0.7)
=================  =====================================================
"""

from __future__ import annotations

import hashlib
import logging
import time
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from mgsv_sk.data._schema import GROUND_TRUTH_COLUMNS, validate_annotations
from mgsv_sk.data.spans import temporal_iou
from mgsv_sk.errors import InvalidInputError, InvalidTypeError
from mgsv_sk.evaluation.metrics import (
    grounding_report_from_iou,
    moment_recall_report,
    retrieval_ranks,
    retrieval_report,
)

logger = logging.getLogger(__name__)

__all__ = [
    "SCORER_NAMES",
    "ProtocolScorer",
    "evaluate",
    "get_scorer",
    "scorer_value",
    "protocol_scorer",
]

# name -> (needs grounding, needs retrieval, report key, sign)
_REGISTRY: dict[str, tuple[bool, bool, str, float]] = {
    "miou": (True, False, "mIoU", 1.0),
    **{f"iou@{t}": (True, False, f"IoU@{t}", 1.0) for t in ("0.3", "0.5", "0.7")},
    **{f"r{k}": (False, True, f"R@{k}", 1.0) for k in (1, 5, 10, 25, 50, 100)},
    "mrr": (False, True, "MRR", 1.0),
    "neg_median_rank": (False, True, "MedianR", -1.0),
    "neg_mean_rank": (False, True, "MeanR", -1.0),
    **{
        f"mor{k}@{t}": (True, True, f"MoR@{k},{t}", 1.0)
        for k in (1, 10, 100)
        for t in ("0.5", "0.7")
    },
}
#: Every valid scorer name.
SCORER_NAMES: tuple[str, ...] = tuple(_REGISTRY)


def scorer_value(report: dict[str, float], name: str, prefix: str = "") -> float:
    """The greater-is-better value of scorer ``name`` in a protocol report (keys as the
    report functions write them, after ``prefix``; early stopping reads ``val_``-keys).

    >>> scorer_value({"MedianR": 3.0}, "neg_median_rank")
    -3.0
    """
    _, _, key, sign = _REGISTRY[name]
    return sign * float(report[prefix + key])


@dataclass
class _Outputs:
    ious: np.ndarray | None = None
    ranks: np.ndarray | None = None


# estimator -> (key of what was scored, outputs); one slot per estimator. The key is the
# estimator's fit token, its parameters, X's identity and a hash of X's content, so a
# frame edited in place, a refit or set_params never gets an old result (an id reused by
# another frame can only match when the content is the same too).
_CACHE: weakref.WeakKeyDictionary[Any, tuple[Any, _Outputs]] = weakref.WeakKeyDictionary()


def _fit_token(estimator: Any) -> Any:
    return getattr(estimator, "fit_token_", None)


def _content_hash(frame: pd.DataFrame) -> str | None:
    """A digest of every value, column name and dtype of ``frame``; None when a cell
    cannot be hashed (e.g. a list), in which case nothing is cached."""
    try:
        rows = pd.util.hash_pandas_object(frame, index=True).to_numpy()
    except TypeError:
        return None
    digest = hashlib.blake2b(rows.tobytes(), digest_size=20)
    digest.update(repr([(str(c), str(t)) for c, t in frame.dtypes.items()]).encode())
    return digest.hexdigest()


def _cache_key(estimator: Any, X: Any, frame: pd.DataFrame) -> tuple[Any, ...] | None:
    """What a cached result is valid for: this fit, these parameters, this frame object
    (scorers called in a row on one X share a pass; another frame is predicted afresh)
    with this content (an in-place edit is predicted again)."""
    token = _fit_token(estimator)
    if token is None:
        return None
    content = _content_hash(frame)
    if content is None:
        return None
    try:
        params = repr(sorted(estimator.get_params(deep=False).items()))
    except Exception:  # not an sklearn estimator: its parameters cannot be compared
        return None
    return (token, params, id(X), content)


def _protocol_outputs(
    estimator: Any, X: Any, grounding: bool, retrieval: bool, features: Any = None,
    verbose: int = 0,
) -> _Outputs:
    """Per-row IoU (SmG, on the true track) and rank0 of the true track, computed once per
    (fitted estimator, X) and shared by every scorer. ``verbose > 0``: a progress bar over
    the two passes (grounding, retrieval)."""
    frame = validate_annotations(X, GROUND_TRUTH_COLUMNS, source="X (scoring)")
    key = _cache_key(estimator, X, frame) if features is None else None
    entry = _CACHE.get(estimator) if key is not None else None
    if entry is None or entry[0] != key:
        entry = (key, _Outputs())
    out = entry[1]
    kwargs = {} if features is None else {"features": features}
    todo = int(grounding and out.ious is None) + int(retrieval and out.ranks is None)
    bar = _stage_bar(todo, verbose)
    if grounding and out.ious is None:
        tic = time.perf_counter()
        if bar is not None:
            bar.set_postfix_str("grounding")
        pred = estimator.predict(frame, **kwargs)
        out.ious = temporal_iou(
            pred[["start", "end"]].to_numpy(dtype=np.float64),
            frame[["music_start", "music_end"]].to_numpy(dtype=np.float64),
            frame["music_total_duration"].to_numpy(dtype=np.float64),
        )
        logger.info("grounded %d videos in %.1f s", len(frame), time.perf_counter() - tic)
        if bar is not None:
            bar.update(1)
    if retrieval and out.ranks is None:
        tic = time.perf_counter()
        if bar is not None:
            bar.set_postfix_str("retrieval")
        gallery = list(pd.unique(frame["music_id"]))
        scores = estimator.decision_function(frame, music_ids=gallery, **kwargs)
        out.ranks = retrieval_ranks(scores, np.asarray(gallery, dtype=object),
                                    frame["music_id"].to_numpy(dtype=object))
        logger.info("ranked %d videos against %d tracks in %.1f s", len(frame), len(gallery),
                    time.perf_counter() - tic)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    if key is not None:
        try:
            _CACHE[estimator] = entry
        except TypeError:  # not weak-referenceable: just do not cache
            pass
    return out


def _stage_bar(total: int, verbose: int) -> Any:
    if verbose <= 0 or total == 0:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="evaluating", unit="pass")


def _report(out: _Outputs) -> dict[str, float]:
    report: dict[str, float] = {}
    if out.ious is not None:
        report.update(grounding_report_from_iou(out.ious))
    if out.ranks is not None:
        report.update(retrieval_report(out.ranks))
    if out.ious is not None and out.ranks is not None:
        report.update(moment_recall_report(out.ranks, out.ious))
    return report


class ProtocolScorer:
    """Scores a fitted grounder on one metric, or on several at once (returns a dict).

    Parameters
    ----------
    names : str or iterable of str
        Names from :data:`SCORER_NAMES`.
    """

    def __init__(self, names: str | Iterable[str]) -> None:
        self.single = isinstance(names, str)
        self.names = [names] if isinstance(names, str) else list(names)
        unknown = [n for n in self.names if n not in _REGISTRY]
        if unknown or not self.names:
            raise InvalidInputError(
                f"unknown scorer name(s) {unknown}; valid names are: {', '.join(SCORER_NAMES)}"
            )
        self.grounding = any(_REGISTRY[n][0] for n in self.names)
        self.retrieval = any(_REGISTRY[n][1] for n in self.names)

    def __call__(self, estimator: Any, X: Any, y: Any = None) -> Any:
        report = _report(_protocol_outputs(estimator, X, self.grounding, self.retrieval))
        values = {n: _REGISTRY[n][3] * report[_REGISTRY[n][2]] for n in self.names}
        return values[self.names[0]] if self.single else values

    def __repr__(self) -> str:
        return f"ProtocolScorer({self.names[0] if self.single else self.names!r})"


def get_scorer(name: str) -> ProtocolScorer:
    """The scorer called ``name``; the error lists every valid name.

    Examples
    --------
    >>> get_scorer("r1")
    ProtocolScorer('r1')
    """
    if not isinstance(name, str):
        raise InvalidTypeError(f"scorer name must be a string, got {type(name).__name__}")
    return ProtocolScorer(name)


def protocol_scorer(names: Iterable[str] | None = None) -> ProtocolScorer:
    """One scorer returning a dict of several metrics from one prediction pass (all
    registered metrics by default): pass it as ``GridSearchCV(scoring=...)``."""
    return ProtocolScorer(SCORER_NAMES if names is None else list(names))


def evaluate(
    estimator: Any,
    X: pd.DataFrame,
    *,
    features: Any = None,
    grounding: bool = True,
    retrieval: bool = True,
    verbose: int = 0,
) -> dict[str, float]:
    """The full protocol table of a fitted grounder on a split (metrics under their
    report names: ``mIoU``, ``IoU@0.5``, ``R@1``, ``MedianR``, ``MoR@1,0.5``, ...).

    Retrieval ranks each video's true track among the split's distinct tracks.
    ``verbose=1`` shows a progress bar over the grounding and retrieval passes (bars over
    the videos inside each pass come from the estimator's own ``verbose``); the time of
    each pass is logged at INFO level either way.
    """
    return _report(_protocol_outputs(estimator, X, grounding, retrieval, features=features,
                                     verbose=verbose))
