"""The retrieval ranker: a music catalogue encoded once, scored against batches of videos.

For every track the catalogue keeps, computed once when it is built:

- the dual embedding h0(M) [D] (the dual score is one matrix product for all tracks);
- the layer-normed states of its snippets [S, D], of which X-Pool's keys and values are
  linear maps (X-Pool depends on the video only through its query, so the per-track part
  is reused by every query; see :mod:`mgsv_sk.nn.xpool`);
- the snippet tokens [S, D] the moment detector reads when the track is grounded.

Ragged per-track arrays are stored back to back with offsets, so a catalogue of thousands
of tracks costs its valid snippets only. Scoring runs over chunks of tracks and chunks
of videos: no [videos x tracks x D] tensor is ever built in one piece.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from ._batching import pad_stack, sorted_batches
from ._device import autocast_for
from .features import FeatureSource

if TYPE_CHECKING:
    from .core.ann import AnnIndex, AnnParams
    from .nn.model import MaDe, MusicEncoding

__all__ = ["MusicCatalogue", "TWO_STAGE_MARGIN"]

#: Two-stage search: tracks not re-ranked by X-Pool keep their dual score minus this, so
#: every re-ranked pair (dual + X-Pool, at least -2) ranks above them (dual, at most 1).
TWO_STAGE_MARGIN = 4.0

logger = logging.getLogger(__name__)


def _ragged(parts: list[np.ndarray], width: int) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.array([len(p) for p in parts], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    data = np.concatenate(parts) if parts else np.zeros((0, width), np.float32)
    return np.ascontiguousarray(data, dtype=np.float32), offsets


class MusicCatalogue:
    """Encoded tracks of a music collection, ready to score and ground against.

    Parameters
    ----------
    ids : list of str
        Track ids, one per row of the arrays.
    emb : ndarray (N, D)
        Dual embeddings h0(M), unit norm.
    tokens : ndarray (sum S, D)
        Snippet tokens of every track back to back; ``offsets`` (N + 1,) delimit them.
    xpool_states : ndarray (sum S, D) or None
        X-Pool snippet states per snippet (None when the model has no X-Pool score).
    offsets : ndarray (N + 1,)
    ann : AnnIndex, optional
        A first-stage index over ``emb`` (:meth:`compact`): an approximate one answers the
        dual top-``xpool_top_k`` of the two-stage search.
    """

    def __init__(
        self,
        ids: Sequence[str],
        emb: np.ndarray,
        tokens: np.ndarray,
        xpool_states: np.ndarray | None,
        offsets: np.ndarray,
        ann: AnnIndex | None = None,
    ) -> None:
        self.ids = [str(i) for i in ids]
        self.emb = emb
        self.tokens = tokens
        self.xpool_states = xpool_states
        self.offsets = offsets
        self.ann = ann
        self.index = {m: i for i, m in enumerate(self.ids)}
        if len(self.index) != len(self.ids):
            raise ValueError("catalogue ids must be unique")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @classmethod
    @torch.no_grad()
    def build(
        cls,
        model: MaDe,
        music_ids: Sequence[str],
        source: FeatureSource,
        batch_size: int = 128,
        autocast: bool | torch.dtype | None = False,
    ) -> MusicCatalogue:
        """Encode ``music_ids`` from ``source`` with ``model`` (eval mode), each track once."""
        ids = list(dict.fromkeys(str(m) for m in music_ids))
        lengths = source.music_lengths(ids)
        n = len(ids)
        emb = np.zeros((n, model.cfg.d_model), np.float32)
        tokens: list[np.ndarray] = [np.zeros(0)] * n
        states: list[np.ndarray] = [np.zeros(0)] * n
        device = next(model.parameters()).device
        for rows in sorted_batches(lengths, batch_size):
            music, mask = pad_stack(source.musics(ids[r] for r in rows))
            with autocast_for(device, autocast):  # False, True (bfloat16) or a dtype
                enc = model.encode_music(music.to(device), mask.to(device))
                st = (model.xpool.snippet_states(enc.tokens)
                      if model.xpool is not None else None)  # [U,S,D]
            emb[rows] = enc.emb.float().cpu().numpy()
            tok = enc.tokens.float().cpu().numpy()
            st_np = None if st is None else st.float().cpu().numpy()
            for j, r in enumerate(rows):
                length = int(lengths[r])
                tokens[r] = tok[j, :length]
                if st_np is not None:
                    states[r] = st_np[j, :length]
        token_data, offsets = _ragged(tokens, model.cfg.d_model)
        st_data = _ragged(states, model.cfg.d_model)[0] if model.xpool is not None else None
        logger.info("encoded a catalogue of %d tracks (%d snippets)", n, len(token_data))
        return cls(ids, emb, token_data, st_data, offsets)

    def compact(self, states: str = "float32", index: str = "exact",
                params: AnnParams | None = None) -> None:
        """Store tokens and X-Pool states as ``states`` ("float32", "float16", "int8";
        :mod:`mgsv_sk.core.compact`) and index the embeddings for the first stage
        (``index``: "auto", "exact", "hnsw", "ivf"; :mod:`mgsv_sk.core.ann`)."""
        from .core.ann import build_index
        from .core.compact import CompactRows, check_state_dtype, encode_rows

        check_state_dtype(states)
        ann = build_index(self.emb, index, params)
        for name in ("tokens", "xpool_states"):
            data = getattr(self, name)
            if isinstance(data, CompactRows):
                data = data.decode()
            if data is not None:
                setattr(self, name, data if states == "float32" else encode_rows(data, states))
        self.ann = ann

    # -- reading ---------------------------------------------------------------------------
    def positions(self, music_ids: Sequence[str]) -> np.ndarray:
        """Row of each id; raises a KeyError naming the ids that are not catalogued."""
        missing = [m for m in music_ids if m not in self.index]
        if missing:
            raise KeyError(
                f"{len(missing)} music_id(s) not in the catalogue, e.g. {missing[:5]}; "
                "add them with set_catalogue(...) or pass a feature source that has them"
            )
        return np.array([self.index[m] for m in music_ids], dtype=np.int64)

    def _padded(self, data: np.ndarray, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return pad_stack([data[self.offsets[r] : self.offsets[r + 1]] for r in rows])

    def encoding(self, rows: np.ndarray) -> MusicEncoding:
        """The cached encoding of catalogue rows as the model's MusicEncoding ([U, S, D])."""
        from .nn.model import MusicEncoding

        tokens, mask = self._padded(self.tokens, rows)
        return MusicEncoding(tokens, mask, torch.from_numpy(self.emb[rows]))

    def xpool_batch(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """The cached X-Pool snippet states of catalogue rows, padded: [U, S, D], mask [U, S]."""
        if self.xpool_states is None:
            raise ValueError("this catalogue has no X-Pool states (the model has no X-Pool score)")
        return self._padded(self.xpool_states, rows)

    # -- scoring ---------------------------------------------------------------------------
    @torch.no_grad()
    def scores(
        self,
        model: MaDe,
        video_emb: torch.Tensor,
        *,
        xpool_top_k: int | None = None,
        track_chunk: int = 64,
    ) -> np.ndarray:
        """Retrieval scores of videos against every catalogue track, (B, N) float32.

        ``video_emb`` [B, D] are unit-norm video embeddings. The dual score covers every
        track; the X-Pool score every track too, or, with ``xpool_top_k``, only the
        ``xpool_top_k`` best tracks of each video by dual score (a two-stage search for
        large catalogues; the rest keep their dual score minus a margin so they rank after
        every re-ranked track).
        """
        cfg = model.cfg
        v = video_emb.float().cpu()
        if (xpool_top_k is not None and xpool_top_k < len(self) and cfg.use_dual
                and self.ann is not None and not self.ann.exact):
            return self._ann_two_stage(model, v, xpool_top_k)
        dual = (v @ torch.from_numpy(self.emb).T).numpy() if cfg.use_dual else None  # [B,N]
        if self.xpool_states is None or model.xpool is None:
            assert dual is not None
            return dual
        if xpool_top_k is not None and xpool_top_k < len(self) and dual is not None:
            return self._two_stage(model, v, dual, xpool_top_k)
        xpool = np.empty((v.shape[0], len(self)), np.float32)
        for lo in range(0, len(self), track_chunk):
            rows = np.arange(lo, min(lo + track_chunk, len(self)))
            xpool[:, rows] = self._xpool(model, v, rows)
        return xpool if dual is None else dual + xpool

    def _xpool(self, model: MaDe, v: torch.Tensor, rows: np.ndarray) -> np.ndarray:
        """X-Pool scores of videos v [B, D] against catalogue rows -> (B, len(rows))."""
        assert model.xpool is not None and self.xpool_states is not None
        states, mask = self.xpool_batch(rows)  # [Uc,S,D], [Uc,S]
        dev = next(model.parameters()).device  # the model's device; results back on the CPU
        return model.xpool.scores_from_states(v.to(dev), states.to(dev), mask.to(dev)).cpu().numpy()

    def _two_stage(
        self, model: MaDe, v: torch.Tensor, dual: np.ndarray, top_k: int
    ) -> np.ndarray:
        """Dual score for all tracks, X-Pool re-ranking of each video's top ``top_k``."""
        from ._base import top_k_indices

        cand = top_k_indices(dual, top_k)  # (B, K)
        out = dual - TWO_STAGE_MARGIN
        for b in range(v.shape[0]):
            rows = cand[b]
            out[b, rows] = dual[b, rows] + self._xpool(model, v[b : b + 1], rows)[0]
        return out

    def _ann_two_stage(self, model: MaDe, v: torch.Tensor, top_k: int) -> np.ndarray:
        """The ANN index's top ``top_k`` per video, X-Pool re-ranked; other tracks -inf."""
        assert self.ann is not None
        dual, cand = self.ann.search(v.numpy(), top_k)  # (B, K) each
        out = np.full((v.shape[0], len(self)), -np.inf, np.float32)
        for b in range(v.shape[0]):
            ok = cand[b] >= 0
            rows = cand[b, ok]
            extra = (self._xpool(model, v[b: b + 1], rows)[0]
                     if self.xpool_states is not None and model.xpool is not None else 0.0)
            out[b, rows] = dual[b, ok] + extra
        return out
