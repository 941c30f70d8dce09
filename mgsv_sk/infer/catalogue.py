"""The torch backend's catalogue: :class:`mgsv_sk.search.catalogue.Catalogue` encoded by a
MaDe model, and the model's X-Pool as the catalogue search's scorer.

The arrays, the search (dual score, full X-Pool scan, two-stage search, top-k) and their
tie rule are the search's, shared with the onnxruntime backend; this module adds only what
needs torch: encoding tracks and evaluating X-Pool.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from mgsv_sk.data.features import FeatureSource
from mgsv_sk.search import (
    TWO_STAGE_MARGIN,
    Catalogue,
    Chunk,
    SnippetRows,
    pair_scores,
    retrieval_scores,
    sorted_batches,
)

from .device import Autocast, autocast_for, model_device
from .padding import pad_stack

if TYPE_CHECKING:
    from ..nn.model import MaDe, MusicEncoding

__all__ = ["MusicCatalogue", "TWO_STAGE_MARGIN", "TorchXPool"]

logger = logging.getLogger(__name__)


class TorchXPool:
    """The model's retrieval scores (dual + X-Pool) for the catalogue search; X-Pool
    on the model's device, results back as float32 numpy."""

    def __init__(self, model: MaDe) -> None:
        self.model = model
        self.device = model_device(model)

    @torch.no_grad()
    def tracks(self, video_emb: np.ndarray, chunk: Chunk) -> np.ndarray:
        assert self.model.xpool is not None
        v = torch.from_numpy(video_emb).to(self.device)
        score = self.model.xpool.scores_from_states(
            v, torch.from_numpy(chunk.states).to(self.device),
            torch.from_numpy(chunk.mask).to(self.device)).float().cpu().numpy()
        if self.model.cfg.use_dual:
            score = video_emb @ chunk.emb.T + score  # [B,D] @ [D,U] -> [B,U]
        return np.asarray(score, np.float32)

    @torch.no_grad()
    def pairs(self, video_emb: np.ndarray, rows: np.ndarray, cat: SnippetRows) -> np.ndarray:
        assert self.model.xpool is not None
        out = np.zeros(len(rows), np.float32)
        for lo in range(0, len(rows), 256):
            part = rows[lo: lo + 256]
            states, mask = cat.padded_states(part)  # [B,S,D], [B,S]
            v = video_emb[lo: lo + len(part)]
            score = self.model.xpool.paired_from_states(
                torch.from_numpy(v).to(self.device), torch.from_numpy(states).to(self.device),
                torch.from_numpy(mask).to(self.device)).float().cpu().numpy()
            if self.model.cfg.use_dual:
                score = (v * cat.emb(part)).sum(-1) + score
            out[lo: lo + len(part)] = score
        return out


def xpool_scorer(model: MaDe, catalogue: Catalogue) -> TorchXPool | None:
    """The X-Pool scorer when the model and the catalogue have X-Pool, else None."""
    return TorchXPool(model) if model.xpool is not None and catalogue.has_xpool else None


class MusicCatalogue(Catalogue):
    """Encoded tracks of a music collection held in memory: the search's catalogue of one
    part, built by a MaDe model.

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
    """

    def __init__(self, ids: Sequence[str], emb: np.ndarray, tokens: np.ndarray,
                 xpool_states: np.ndarray | None, offsets: np.ndarray) -> None:
        super().__init__(Catalogue.from_arrays(ids, emb, tokens, xpool_states, offsets).parts)

    @classmethod
    @torch.no_grad()
    def build(cls, model: MaDe, music_ids: Sequence[str], source: FeatureSource,
              batch_size: int = 128, autocast: Autocast = None) -> MusicCatalogue:
        """Encode ``music_ids`` from ``source`` with ``model`` (eval mode), each track once."""
        ids = list(dict.fromkeys(str(m) for m in music_ids))
        lengths = source.music_lengths(ids)
        n, d = len(ids), model.cfg.d_model
        emb = np.zeros((n, d), np.float32)
        tokens: list[np.ndarray] = [np.zeros((0, d), np.float32)] * n
        states: list[np.ndarray] = [np.zeros((0, d), np.float32)] * n
        device = model_device(model)
        for rows in sorted_batches(lengths, batch_size):
            music, mask = pad_stack(source.musics(ids[r] for r in rows))
            with autocast_for(device, autocast):
                enc = model.encode_music(music.to(device), mask.to(device))
                st = (model.xpool.snippet_states(enc.tokens)
                      if model.xpool is not None else None)  # [U,S,D]
            emb[rows] = enc.emb.float().cpu().numpy()
            tok = enc.tokens.float().cpu().numpy()
            st_np = None if st is None else st.float().cpu().numpy()
            for j, r in enumerate(rows):
                tokens[r] = tok[j, : int(lengths[r])]
                if st_np is not None:
                    states[r] = st_np[j, : int(lengths[r])]
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        token_data = np.concatenate(tokens) if n else np.zeros((0, d), np.float32)
        state_data = (np.concatenate(states) if n else np.zeros((0, d), np.float32)
                      ) if model.xpool is not None else None
        logger.info("encoded a catalogue of %d tracks (%d snippets)", n, len(token_data))
        return cls(ids, emb, token_data, state_data, offsets)

    def encoding(self, rows: np.ndarray) -> MusicEncoding:
        """The cached encoding of catalogue rows as the model's MusicEncoding ([U, S, D])."""
        from ..nn.model import MusicEncoding

        tokens, mask = self.padded_tokens(rows)
        return MusicEncoding(torch.from_numpy(tokens), torch.from_numpy(mask),
                             torch.from_numpy(self.emb(rows)))

    def scores(self, model: MaDe, video_emb: torch.Tensor, *, xpool_top_k: int | None = None,
               track_chunk: int = 64) -> np.ndarray:
        """Retrieval scores of unit-norm videos [B, D] against every track, (B, N) float32
        (see :func:`mgsv_sk.search.catalogue.retrieval_scores`)."""
        return retrieval_scores(video_emb.float().cpu().numpy(), self,
                                xpool_scorer(model, self), use_dual=model.cfg.use_dual,
                                xpool_top_k=xpool_top_k, track_chunk=track_chunk)

    def pair_scores(self, model: MaDe, video_emb: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Retrieval score of (video i, catalogue row ``rows[i]``), (n,) float32."""
        return pair_scores(video_emb, rows, self, xpool_scorer(model, self))
