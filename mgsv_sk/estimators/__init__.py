"""The estimators a user fits: ``made.MGSVGrounder`` (the MaDe model in torch) and the
baselines (``baselines``: trivial and ridge), with the saved-model folder
(``_persistence``) and the fitted state ``fit`` and ``load`` share (``_fitted``).

The top of the library: may import everything below it, never ``cli`` or ``export``.
"""
