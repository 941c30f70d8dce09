"""The fitted state of an MGSVGrounder: what ``fit`` produces and what loading a saved
model produces, as one object (the estimator applies it; persistence only reads and
writes it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mgsv_sk.infer.catalogue import MusicCatalogue
    from mgsv_sk.nn.model import MaDe

__all__ = ["FittedState"]


@dataclass(frozen=True)
class FittedState:
    """The trained network (eval mode), its encoded catalogue and the fit's record."""

    model: MaDe
    catalogue: MusicCatalogue
    history: list[dict[str, Any]]
    best_epoch: int
    n_epochs: int
    stopped: str
    #: torch intra-op threads the fit ran with (None: not recorded, e.g. a loaded model).
    n_threads: int | None = None
    #: which weights the model holds and why (``returned_weights_``; "" before it existed).
    returned: str = ""
    #: the re-ranking weight chosen on the validation split (``moment_weight="auto"``;
    #: None: not chosen) and each tried weight's validation R@1.
    moment_weight: float | None = None
    moment_weight_scores: dict[str, float] | None = None
