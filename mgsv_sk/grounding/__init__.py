"""The grounder both backends share: ``base.BaseGrounder`` (predict / rank /
decision_function / score / set_catalogue and the output columns, given encode / score /
ground hooks), moment selection (``moments``) and scikit-learn's estimator base for the
trainable grounders (``sklearn_base``).

torch-free: the onnxruntime backend (``export.runtime``) stands on it. Imports
``data``, ``evaluation`` and ``search``.
"""
