"""Hyper-parameters of the MaDe model, frozen and validated once.

The fields a user tunes are :class:`mgsv_sk.MGSVGrounder`'s parameters, and their defaults
are declared there only (its signature): this config has none for them, the estimator
builds it from its parameters. The fields it keeps defaults for are architecture details
no estimator parameter exposes (input widths come from the features).
"""

from __future__ import annotations

from dataclasses import dataclass

from mgsv_sk.data.spans import MAX_MUSIC_SNIPPETS, MAX_VIDEO_FRAMES

RETRIEVAL_SCORE_NAMES: tuple[str, ...] = ("dual", "xpool")
#: Moment heads: "window" scores every candidate window (:mod:`mgsv_sk.nn.window`, the
#: default); "detr" is the paper's single-query detector (:mod:`mgsv_sk.nn.detector`).
DETECTORS: tuple[str, ...] = ("window", "detr")


@dataclass(frozen=True, kw_only=True)
class MaDeConfig:
    """Architecture of :class:`mgsv_sk.nn.model.MaDe`.

    Parameters
    ----------
    video_dim, music_dim : int
        Input feature sizes (CLIP ViT-B/32 frames: 512; AST snippets: 768).
    d_model : int
        Model width D; even (sine code) and divisible by ``n_heads``.
    n_heads : int
        Attention heads of the temporal encoders and of the detector.
    temporal_layers : int
        Temporal self-attention layers per modality (0 = projection only, a paper ablation).
    temporal_dropout : float
        Dropout on the residual branches of the temporal self-attention layers.
    input_dropout : float
        Dropout on the input features (frames and snippets) in training: the frozen
        features' dimensions cannot be memorised one by one.
    ffn_mult : int
        Feed-forward width as a multiple of ``d_model``.
    detector : {"window", "detr"}
        The moment head: "window" scores candidate windows on a grid of starts
        (:class:`mgsv_sk.nn.window.WindowHead`); "detr" is the paper's single-query DETR
        (:class:`mgsv_sk.nn.detector.MomentDetector`).
    encoder_layers, decoder_layers : int
        DETR transformer depth (encoder may be 0, a paper ablation; decoder >= 1).
    detector_dropout : float
        Dropout inside the DETR detector: residual branches and FFN everywhere, attention
        weights in the decoder (not in the encoder, see :class:`mgsv_sk.nn.model.MaDe`).
    span_mlp_layers : int
        Layers of the DETR span head MLP.
    window_hidden : int
        Width of the window head's per-candidate network.
    windows_per_snippet : int
        Candidate starts per 2.5 s snippet hop (2: a start every 1.25 s, each refined by a
        regressed offset).
    retrieval_scores : tuple of str
        Which retrieval scores to compute and train: any non-empty subset of
        ``("dual", "xpool")``.
    temperature_init : float
        Initial InfoNCE temperature (learned, shared by all retrieval losses).
    max_frames, max_snippets : int
        Longest video (frames) and track (snippets) the position codes cover.
    """

    # the estimator's parameters (defaults: mgsv_sk/train/parameters.py)
    d_model: int
    n_heads: int
    temporal_layers: int
    temporal_dropout: float
    input_dropout: float
    ffn_mult: int
    detector: str
    encoder_layers: int
    decoder_layers: int
    detector_dropout: float
    retrieval_scores: tuple[str, ...]
    temperature_init: float
    # details no parameter exposes
    video_dim: int = 512
    music_dim: int = 768
    span_mlp_layers: int = 3
    window_hidden: int = 64
    windows_per_snippet: int = 2
    max_frames: int = MAX_VIDEO_FRAMES
    max_snippets: int = MAX_MUSIC_SNIPPETS

    def __post_init__(self) -> None:
        # Accept any iterable of names (a list from a grid search) but store a tuple.
        scores = self.retrieval_scores
        if isinstance(scores, str):
            scores = (scores,)
        object.__setattr__(self, "retrieval_scores", tuple(scores))
        problems = self._problems()
        if problems:
            raise ValueError("Invalid MaDeConfig:\n  - " + "\n  - ".join(problems))

    def _problems(self) -> list[str]:
        problems: list[str] = []
        positive = ("video_dim", "music_dim", "d_model", "n_heads", "ffn_mult",
                    "decoder_layers", "span_mlp_layers", "max_frames", "max_snippets",
                    "window_hidden", "windows_per_snippet")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                problems.append(f"{name} must be an int >= 1, got {value!r}")
        for name in ("temporal_layers", "encoder_layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                problems.append(f"{name} must be an int >= 0, got {value!r}")
        for name in ("temporal_dropout", "input_dropout", "detector_dropout"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                problems.append(f"{name} must be a float in [0, 1), got {value!r}")
        if not (isinstance(self.temperature_init, (int, float)) and self.temperature_init > 0):
            problems.append(f"temperature_init must be > 0, got {self.temperature_init!r}")
        if self.detector not in DETECTORS:
            problems.append(f"detector must be one of {DETECTORS}, got {self.detector!r}")
        d, h = self.d_model, self.n_heads
        if isinstance(d, int) and isinstance(h, int) and d >= 1 and h >= 1:
            if d % 2:
                problems.append(f"d_model must be even (sine position code), got {d}")
            if d % h:
                problems.append(
                    f"d_model must be divisible by n_heads, got d_model={d}, n_heads={h}; "
                    f"pick n_heads among the divisors of {d}"
                )
        unknown = [s for s in self.retrieval_scores if s not in RETRIEVAL_SCORE_NAMES]
        if not self.retrieval_scores or unknown or len(set(self.retrieval_scores)) != len(
            self.retrieval_scores
        ):
            problems.append(
                f"retrieval_scores must be a non-empty subset of {RETRIEVAL_SCORE_NAMES} "
                f"without repeats, got {self.retrieval_scores!r}"
            )
        return problems

    @property
    def use_dual(self) -> bool:
        """Whether the dual score cos(h(v), h0(M)) is computed and trained."""
        return "dual" in self.retrieval_scores

    @property
    def use_xpool(self) -> bool:
        """Whether the X-Pool score cos(h(v), h1(M|v)) is computed and trained."""
        return "xpool" in self.retrieval_scores

    @property
    def d_ffn(self) -> int:
        """Feed-forward hidden width."""
        return self.d_model * self.ffn_mult
