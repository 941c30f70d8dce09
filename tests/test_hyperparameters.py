"""Each hyper-parameter is declared once (mgsv_sk/train/parameters.py): the signature, the
constraints, the docstring, the documentation's table and the configs all come from it."""

from __future__ import annotations

import inspect
import os
import pickle
import re
from numbers import Integral, Real
from pathlib import Path

import pytest
import sklearn
from sklearn.base import clone

from mgsv_sk import MGSVGrounder
from mgsv_sk.grounding.hyperparameters import Hyper, HyperGroup, declared
from mgsv_sk.grounding.validation import (
    Interval,
    InvalidParameterError,
    StrOptions,
    validate_parameter_constraints,
)
from mgsv_sk.train.fitting import loss_weights, model_config, train_config
from mgsv_sk.train.parameters import GROUNDER_PARAMETERS

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "estimator.md"
BEGIN = "<!-- parameters: generated from mgsv_sk/train/parameters.py"
END = "<!-- end of parameters -->"


def test_the_signature_constraints_and_docstring_follow_the_declaration():
    names = [p.name for p in GROUNDER_PARAMETERS]
    signature = inspect.signature(MGSVGrounder)
    assert list(signature.parameters) == names
    assert signature.parameters["features"].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY
               for p in list(signature.parameters.values())[1:])
    assert MGSVGrounder().get_params() == GROUNDER_PARAMETERS.defaults()
    assert set(MGSVGrounder._parameter_constraints) == set(names)
    for group in GROUNDER_PARAMETERS.groups:
        entry = ", ".join(p.name for p in group.params) + " : " + group.type
        assert entry in MGSVGrounder.__doc__
    assert "<hyper-parameters>" not in MGSVGrounder.__doc__


def test_every_config_field_an_estimator_sets_is_routed_and_exists():
    params = MGSVGrounder().get_params()
    cfg = model_config(params, 512, 768)
    weights = loss_weights(params)
    train = train_config(params, 0, 0.0, None)
    for p in GROUNDER_PARAMETERS:
        if p.target is None:
            continue
        target, field = p.target
        obj = {"model": cfg, "loss": weights, "train": train}[target]
        value = p.convert(p.default) if p.convert else p.default
        assert getattr(obj, field) == value, p.name


def test_the_docs_table_is_generated_from_the_declaration():
    text = DOCS.read_text()
    start = text.index(BEGIN)
    body_start = text.index("\n", start) + 1
    stop = text.index(END)
    table = GROUNDER_PARAMETERS.markdown_table() + "\n"
    if text[body_start:stop] != table and os.environ.get("MGSV_UPDATE_DOCS") == "1":
        DOCS.write_text(text[:body_start] + table + text[stop:])
        text = DOCS.read_text()
    assert text[body_start:stop] == table, (
        "docs/estimator.md's parameter table is out of date: run "
        "MGSV_UPDATE_DOCS=1 python -m pytest tests/test_hyperparameters.py")


# A new hyper-parameter, in one declaration: a model field no parameter exposed so far.
_WINDOW_HIDDEN = HyperGroup(
    (Hyper("window_hidden", 64, [Interval(Integral, 1, None, closed="left")], "int",
           "model", int),
     Hyper("aux_weight", 1.0, [Interval(Real, 0, None, closed="left")], "float",
           "loss.aux_weight")),
    "int, float", "Hidden width of the window head's scorer; weight of the decoder's "
                  "auxiliary losses.", "window head width; auxiliary loss weight")
_EXTENDED = GROUNDER_PARAMETERS.with_group(_WINDOW_HIDDEN, after="ffn_mult")


@declared(_EXTENDED)
class _Wider(MGSVGrounder):
    pass


def test_one_declaration_adds_a_hyper_parameter_everywhere():
    # signature, get_params / set_params / clone
    signature = inspect.signature(_Wider)
    assert signature.parameters["window_hidden"].default == 64
    est = _Wider(window_hidden=32, aux_weight=0.5, d_model=64)
    assert est.get_params()["window_hidden"] == 32
    assert clone(est).get_params() == est.get_params()
    assert est.set_params(window_hidden=16).window_hidden == 16
    # constraints: refused before fit, in the one message
    assert "window_hidden" in _Wider._parameter_constraints
    with pytest.raises(InvalidParameterError, match="window_hidden"):
        _Wider(window_hidden=0)._check_params()
    # docstring and docs table
    assert "window_hidden, aux_weight : int, float" in _Wider.__doc__
    assert "| `window_hidden`, `aux_weight` | 64, 1 |" in _EXTENDED.markdown_table()
    # the configs carry it
    params = est.get_params()
    assert model_config(params, 512, 768, _EXTENDED).window_hidden == 16
    assert loss_weights(params, _EXTENDED).aux_weight == 0.5
    assert train_config(params, 0, 0.0, None, _EXTENDED).loss_weights.aux_weight == 0.5
    # the original estimator is untouched
    assert "window_hidden" not in MGSVGrounder().get_params()


def test_an_extended_estimator_fits_with_the_new_parameter(small_train):
    est = _Wider(features=small_train.features, d_model=32, n_heads=2, window_hidden=8,
                 max_epochs=1, random_state=0).fit(small_train.frame)
    assert est.model_.cfg.window_hidden == 8


def test_a_parameter_declared_twice_is_refused():
    with pytest.raises(ValueError, match="'lr' is declared twice"):
        GROUNDER_PARAMETERS.with_group(HyperGroup((Hyper("lr", 1.0, []),), "float", "", ""))


def test_grid_search_params_and_old_pickles_are_unchanged():
    est = MGSVGrounder(d_model=64, lr=1e-2, moment_weight=0.1)
    assert clone(est).get_params() == est.get_params()
    state = pickle.loads(pickle.dumps(est)).__dict__
    del state["moment_weight"]  # a pickle from before the parameter existed
    old = MGSVGrounder.__new__(MGSVGrounder)
    old.__setstate__(state)
    assert old.moment_weight == "auto"
    assert re.search(r"d_model=64", repr(est))


def test_the_sklearn_validation_adapter_works_on_this_scikit_learn():
    constraints = {"a": [Interval(Integral, 1, None, closed="left")], "b": [StrOptions({"x"})]}
    validate_parameter_constraints(constraints, {"a": 1, "b": "x"}, caller_name="t")
    with pytest.raises(InvalidParameterError, match="'a' parameter of t"):
        validate_parameter_constraints(constraints, {"a": 0, "b": "x"}, caller_name="t")
    assert issubclass(InvalidParameterError, ValueError)
    major, minor = (int(x) for x in sklearn.__version__.split(".")[:2])
    assert (1, 4) <= (major, minor) < (1, 10), "re-check mgsv_sk/grounding/validation.py"
