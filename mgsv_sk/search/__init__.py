"""Catalogue search, whatever the storage: the catalogue arrays and the dual / X-Pool /
two-stage search over them (``catalogue``, with the ``Scorer`` protocol each backend
implements), the ANN first stage (``ann``), compact snippet rows (``compact``), shards on
Dask workers (``sharded``), top-k selection (``topk``) and the one ranking rule that
re-scores the best candidates by their moment (``rerank``).

numpy only (FAISS and Dask when asked for); imports :mod:`mgsv_sk.data` and
:mod:`mgsv_sk.files`, never torch.
"""
