"""The torch backend's inference: where a model runs and in which precision (``device``),
batched embedding and grounding over a feature source (``batched``), and the catalogue a
MaDe model encodes, with its X-Pool as the core search's scorer (``catalogue``).

Shared by the estimator and by the fit loop's per-epoch validation. May import torch,
:mod:`mgsv_sk.core` and :mod:`mgsv_sk.nn`; never ``train``, the estimator, ``cli`` or
``export``.
"""
