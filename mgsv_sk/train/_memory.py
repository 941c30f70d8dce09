"""Cross-batch track memory: the encodings of recent batches' tracks as extra negatives.

A batch of 64 videos holds about 60 distinct tracks, so each video's InfoNCE contrasts its
track with 59 others; a catalogue query contrasts it with thousands. The memory keeps the
encoded snippet tokens (and dual embeddings) of the last ``capacity`` distinct tracks the
fit saw, detached, and the training forward scores every video against them too: more
negatives per step at the price of one extra [B, capacity] retrieval score, no extra
encoding (the cross-batch memory of Wang et al., CVPR 2020). An entry lags the encoder by
the steps since its track was last in a batch (a track seen again is overwritten): with no
more training tracks than ``capacity`` it holds all of them, each as encoded at most about
an epoch ago, with more it holds the most recent. The fit consults it from its second epoch
(:data:`mgsv_sk.train._training.MEMORY_FROM_EPOCH`), when the encoders move less.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..nn.model import MemoryNegatives, MusicEncoding

__all__ = ["TrackMemory"]


class TrackMemory:
    """The encodings of the last ``capacity`` distinct tracks seen (detached).

    ``negatives(batch_ids)`` returns the stored tracks that are not in the current batch
    (a track is never its own negative) as :class:`MemoryNegatives`; ``push`` then adds the
    batch's tracks: a track already stored is overwritten with its newer encoding, a new
    one takes a free slot or the slot of the track stored longest ago.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.slot: OrderedDict[str, int] = OrderedDict()  # oldest first
        self.tokens: Tensor | None = None  # [C, S, D], S grows to the longest track seen
        self.mask: Tensor | None = None  # [C, S] bool
        self.emb: Tensor | None = None  # [C, D] float32

    def __len__(self) -> int:
        return len(self.slot)

    def negatives(self, batch_ids: Sequence[str]) -> MemoryNegatives | None:
        """The stored tracks other than ``batch_ids`` (the buffers and the slots to score,
        nothing gathered yet); None while there are none."""
        if self.tokens is None or self.mask is None or self.emb is None:
            return None
        exclude = set(batch_ids)
        keep = sorted(s for m, s in self.slot.items() if m not in exclude)
        if not keep:
            return None
        rows = torch.tensor(keep, dtype=torch.long, device=self.tokens.device)
        return MemoryNegatives(MusicEncoding(self.tokens, self.mask, self.emb), rows)

    @torch.no_grad()
    def push(self, music: MusicEncoding, ids: Sequence[str]) -> None:
        """Store a batch's encoded tracks (tokens [U, S, D], mask [U, S], emb [U, D])."""
        if len(ids) != music.emb.shape[0]:
            raise ValueError(f"{len(ids)} ids for {music.emb.shape[0]} encoded tracks")
        tokens, mask, emb = music.tokens.detach(), music.mask, music.emb.detach().float()
        u, s, d = tokens.shape
        if self.tokens is None or self.mask is None or self.emb is None:
            self.tokens = tokens.new_zeros(self.capacity, s, d)
            self.mask = mask.new_zeros(self.capacity, s)
            self.emb = emb.new_zeros(self.capacity, d)
        elif s > self.tokens.shape[1]:  # a longer track than any so far: widen the buffer
            grow = s - self.tokens.shape[1]
            self.tokens = F.pad(self.tokens, (0, 0, 0, grow))
            self.mask = F.pad(self.mask, (0, grow))
        for i in range(max(0, u - self.capacity), u):
            track = ids[i]
            if track in self.slot:
                at = self.slot.pop(track)
            elif len(self.slot) < self.capacity:
                at = len(self.slot)
            else:
                at = self.slot.pop(next(iter(self.slot)))  # the oldest track leaves
            self.slot[track] = at
            self.tokens[at].zero_()
            self.tokens[at, :s] = tokens[i].to(self.tokens.dtype)
            self.mask[at] = False
            self.mask[at, :s] = mask[i]
            self.emb[at] = emb[i]
