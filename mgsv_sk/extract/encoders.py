"""The two feature encoders: CLIP ViT-B/32 image embeddings and AST pooled outputs.

An encoder is any object with ``dim`` (output width), ``name`` and
``encode(inputs) -> (B, dim) float32``; the extraction pipeline and the runtime take any
of them. Here are the torch ones, over ``transformers`` models (loaded by hub name or
local folder with :meth:`from_pretrained`, or wrapping a model you built);
:mod:`mgsv_sk.extract.onnx_encoders` has their onnxruntime twins.
"""

from __future__ import annotations

import os
from typing import Any, Protocol

import numpy as np

from mgsv_sk._extras import require
from mgsv_sk.errors import InvalidInputError

__all__ = ["AstEncoder", "ClipImageEncoder", "DEFAULT_AST", "DEFAULT_CLIP", "Encoder"]

#: The release's encoders on the hub (downloaded by transformers into its cache).
DEFAULT_CLIP = "openai/clip-vit-base-patch32"
DEFAULT_AST = "MIT/ast-finetuned-audioset-10-10-0.4593"


class Encoder(Protocol):
    """What the pipeline needs of an encoder."""

    @property
    def name(self) -> str:
        """What the encoder is (a hub name, a path)."""
        ...

    @property
    def dim(self) -> int:
        """Width of the embeddings."""
        ...

    def encode(self, inputs: np.ndarray) -> np.ndarray:
        """(B, ...) float32 inputs -> (B, dim) float32 embeddings."""
        ...


class _TorchEncoder:
    """A transformers model run in eval mode without gradients, ``batch_size`` at a time."""

    kind = ""

    def __init__(self, model: Any, *, batch_size: int = 16, name: str | None = None) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidInputError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.model = model.eval()
        self.batch_size = batch_size
        self.name = name or str(getattr(model.config, "_name_or_path", "") or self.kind)

    @property
    def dim(self) -> int:
        raise NotImplementedError

    def module(self) -> Any:
        """A ``torch.nn.Module`` mapping the input tensor to the embedding (for export)."""
        raise NotImplementedError

    def encode(self, inputs: np.ndarray) -> np.ndarray:
        import torch
        inputs = np.ascontiguousarray(inputs, dtype=np.float32)
        out = np.zeros((len(inputs), self.dim), np.float32)
        module = self.module()
        with torch.inference_mode():
            for lo in range(0, len(inputs), self.batch_size):
                batch = torch.from_numpy(inputs[lo: lo + self.batch_size])
                out[lo: lo + len(batch)] = module(batch).float().numpy()
        return out

    @classmethod
    def _load(cls, loader: str, name_or_path: str | os.PathLike[str], batch_size: int,
              **kwargs: Any) -> Any:
        transformers = require("transformers", f"loading the {cls.kind} encoder")
        model_cls = getattr(transformers, loader)
        try:
            model = model_cls.from_pretrained(os.fspath(name_or_path), **kwargs)
        except OSError as exc:
            raise OSError(
                f"cannot load the {cls.kind} encoder {os.fspath(name_or_path)!r}: {exc}; pass a "
                "hub name (downloaded once into the hub cache: this needs the network) or a "
                "local folder holding config.json and the weights"
            ) from exc
        return cls(model, batch_size=batch_size, name=os.fspath(name_or_path))


def _clip_module(model: Any) -> Any:
    import torch

    class ClipImage(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, pixels: Any) -> Any:  # [B, 3, 224, 224] -> [B, 512]
            return self.model(pixel_values=pixels).image_embeds

    return ClipImage().eval()


def _ast_module(model: Any) -> Any:
    import torch

    class AstPooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, fbank: Any) -> Any:  # [B, 1024, 128] -> [B, 768]
            return self.model(input_values=fbank).pooler_output

    return AstPooled().eval()


class ClipImageEncoder(_TorchEncoder):
    """CLIP image embeddings (``CLIPVisionModelWithProjection.image_embeds``), not
    L2-normalised: (B, 3, 224, 224) CLIP-normalised pixels -> (B, projection_dim).

    Examples
    --------
    >>> from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection
    >>> cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
    ...                        num_attention_heads=2, image_size=224, patch_size=32)
    >>> enc = ClipImageEncoder(CLIPVisionModelWithProjection(cfg))
    >>> enc.encode(np.zeros((2, 3, 224, 224), np.float32)).shape
    (2, 512)
    """

    kind = "CLIP image"

    @property
    def dim(self) -> int:
        return int(self.model.config.projection_dim)

    def module(self) -> Any:
        return _clip_module(self.model)

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike[str] = DEFAULT_CLIP, *,
                        batch_size: int = 16, **kwargs: Any) -> ClipImageEncoder:
        """Load ``CLIPVisionModelWithProjection`` weights (default ViT-B/32, the release's);
        ``kwargs`` go to ``from_pretrained`` (``local_files_only=True``, ``revision=``...)."""
        out: ClipImageEncoder = cls._load("CLIPVisionModelWithProjection", name_or_path,
                                          batch_size, **kwargs)
        return out


class AstEncoder(_TorchEncoder):
    """AST pooled outputs (``ASTModel.pooler_output``: the mean of the CLS and distillation
    tokens after the final LayerNorm): (B, 1024, 128) normalised fbanks -> (B, hidden)."""

    kind = "AST"

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def module(self) -> Any:
        return _ast_module(self.model)

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike[str] = DEFAULT_AST, *,
                        batch_size: int = 8, **kwargs: Any) -> AstEncoder:
        """Load ``ASTModel`` weights (default the AudioSet 10-10 0.4593 checkpoint, the
        release's); ``kwargs`` go to ``from_pretrained``."""
        out: AstEncoder = cls._load("ASTModel", name_or_path, batch_size, **kwargs)
        return out
