"""The torch-free core: the one implementation both backends share, the torch backend
(:class:`mgsv_sk.MGSVGrounder`) and the onnxruntime backend (``export.runtime``).

Owns the frame schema (``_schema``), span geometry and the task's constants (``spans``:
240 s, 2.5 s snippets, 96 snippets, 50 frames), metrics and scorers (``metrics``,
``scoring``), feature sources, checks and the packed store (``features``, ``_sources``,
``packed``, ``_tree``), the catalogue arrays and their search (``catalogue``), moment
selection (``moments``), checksummed atomic artefact folders (``_atomic``) and the base
grounder (``grounder``: predict / rank / decision_function / score / set_catalogue, and
the output columns; ``sklearn_base`` adds scikit-learn's estimator base for the trainable
grounders).

May import numpy, pandas and the standard library (scikit-learn in ``sklearn_base`` and
lazily for the fitted check; torch only lazily, inside ``_tree``, to read ``.pt`` files),
never ``mgsv_sk.nn`` or anything above it.
"""
