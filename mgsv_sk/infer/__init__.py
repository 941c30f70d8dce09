"""The torch backend's inference: where a model runs and in which precision (``device``),
batched embedding and grounding over a feature source (``batched``), and the catalogue a
MaDe model encodes, with its X-Pool as the search's scorer (``catalogue``).

Shared by the estimator and by the fit loop's per-epoch validation. May import torch,
the torch-free layers and :mod:`mgsv_sk.nn`; never ``train``, the estimators, ``cli`` or
``export``.
"""
