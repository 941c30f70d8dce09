"""The MGSV-EC data: the task's constants and span geometry (``spans``), the annotation
schema and its readers (``_schema``, ``_readers``), feature sources (``features``: the
release's ``.pt`` tree, the packed store, arrays; with ``_sources``, ``_tree``, ``packed``),
synthetic worlds (``synthetic``) and predictions as JSON lines (``jsonl``).

numpy, pandas and the standard library (torch only lazily, to read ``.pt`` files); imports
:mod:`mgsv_sk.files` and nothing else of the package.
"""
