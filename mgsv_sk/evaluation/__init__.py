"""The protocol's measures: metrics on spans and ranks (``metrics``) and the scorers that
put them in scikit-learn's model selection (``scoring``).

numpy and pandas; imports :mod:`mgsv_sk.data` only.
"""
