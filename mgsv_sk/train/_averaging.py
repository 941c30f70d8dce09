"""An exponential moving average of the weights: the model a fit validates, keeps and returns.

Averaging the iterates of a run at a constant learning rate does what annealing the rate
does (it cancels the step noise), without deciding in advance when to anneal: every
epoch's average is a finished model, so whichever epoch early stopping keeps is one.
With a cosine over ``max_epochs`` instead, an epoch kept early was taken at ~90 % of the
peak rate and never annealed (on unseen tracks it lost ~9 points of R@1 to a 5-epoch fit).
"""

from __future__ import annotations

import math

import torch

__all__ = ["WeightAverage"]


class WeightAverage:
    """The EMA of a module's floating-point parameters, updated after every optimizer step.

    ``halflife_steps``: the steps after which a step's weights count half; before the
    average has seen that many steps it is the uniform mean of the steps so far (the
    early, poor weights are not carried at a fixed share). Buffers (non-parameters) are
    taken from the live model when the average is swapped in.
    """

    def __init__(self, model: torch.nn.Module, halflife_steps: float) -> None:
        if halflife_steps <= 0:
            raise ValueError(f"halflife_steps must be > 0, got {halflife_steps}")
        self.decay = math.exp(-math.log(2.0) / halflife_steps)
        self.steps = 0
        self._params = [p for p in model.parameters() if p.dtype.is_floating_point]
        self._average = [p.detach().clone() for p in self._params]

    @torch.no_grad()
    def update(self) -> None:
        self.steps += 1
        decay = min(self.decay, 1.0 - 1.0 / self.steps)
        torch._foreach_lerp_(self._average, [p.detach() for p in self._params], 1.0 - decay)

    @torch.no_grad()
    def swap(self) -> None:
        """Exchange the live weights and the average (call twice to restore)."""
        for live, avg in zip(self._params, self._average):
            tmp = live.detach().clone()
            live.copy_(avg)
            avg.copy_(tmp)
