"""Hyper-parameters declared once: each one's name, default, constraints, documentation
and the config field it feeds, from which a class decorator builds the estimator's
``__init__`` (and its signature), ``_parameter_constraints``, the docstring's
``Parameters`` section and the documentation's table.

Why a generated ``__init__`` and not nested configs (as skorch routes ``module__x``):
scikit-learn's ``get_params`` reads the names of ``inspect.signature(cls.__init__)``,
which honours ``__signature__``, so a flat estimator keeps ``get_params`` / ``set_params``
/ ``clone`` / ``GridSearchCV`` exactly as an explicit signature does (a grid over
``d_model``, ``lr``, ``moment_weight`` needs no prefix), and each parameter is still
stored as given. Torch-free.
"""

from __future__ import annotations

import inspect
import textwrap
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

__all__ = ["Declaration", "HyperGroup", "Hyper", "declared"]

#: The docstring line the decorator replaces with the rendered ``Parameters`` entries.
PARAMETERS_MARKER = "<hyper-parameters>"


@dataclass(frozen=True)
class Hyper:
    """One hyper-parameter.

    ``to``: where the fit routes it, ``"target"`` (the field of the same name) or
    ``"target.field"`` (e.g. ``"loss.l1"``); None when the estimator or the fit reads it
    itself. ``convert`` is applied to the value on the way (``int``, ``tuple``).
    ``annotation`` is the signature's annotation, as text.
    """

    name: str
    default: Any
    constraints: Any
    annotation: str = "Any"
    to: str | None = None
    convert: Callable[[Any], Any] | None = None

    @property
    def target(self) -> tuple[str, str] | None:
        if self.to is None:
            return None
        target, _, name = self.to.partition(".")
        return target, name or self.name


@dataclass(frozen=True)
class HyperGroup:
    """Parameters documented together: one docstring entry (``names : type`` then
    ``doc``) and one row of the documentation's table (``summary``)."""

    params: tuple[Hyper, ...]
    type: str
    doc: str
    summary: str


@dataclass(frozen=True)
class Declaration:
    """An estimator's hyper-parameters in signature order; ``positional``: how many lead
    the signature as positional-or-keyword (the rest are keyword-only)."""

    groups: tuple[HyperGroup, ...]
    positional: int = 1
    _by_name: dict[str, Hyper] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_name: dict[str, Hyper] = {}
        for p in (p for g in self.groups for p in g.params):
            if p.name in by_name:
                raise ValueError(f"hyper-parameter {p.name!r} is declared twice")
            by_name[p.name] = p
        object.__setattr__(self, "_by_name", by_name)

    def __iter__(self) -> Any:
        return iter(self._by_name.values())

    def __getitem__(self, name: str) -> Hyper:
        return self._by_name[name]

    def with_group(self, group: HyperGroup, *, after: str | None = None) -> Declaration:
        """This declaration plus ``group``, placed after the group holding ``after``
        (default: last)."""
        groups = list(self.groups)
        at = len(groups)
        if after is not None:
            at = 1 + next(i for i, g in enumerate(groups)
                          if any(p.name == after for p in g.params))
        groups.insert(at, group)
        return Declaration(tuple(groups), self.positional)

    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self}

    def constraints(self) -> dict[str, Any]:
        return {p.name: p.constraints for p in self}

    def signature(self) -> inspect.Signature:
        kinds = [inspect.Parameter.POSITIONAL_OR_KEYWORD] * self.positional
        params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
        for i, p in enumerate(self):
            kind = kinds[i] if i < len(kinds) else inspect.Parameter.KEYWORD_ONLY
            params.append(inspect.Parameter(p.name, kind, default=p.default,
                                            annotation=p.annotation))
        return inspect.Signature(params, return_annotation="None")

    def route(self, params: Mapping[str, Any], target: str) -> dict[str, Any]:
        """The fields of config ``target`` ("model", "train", "loss") from the values
        ``params``, converted."""
        out = {}
        for p in self:
            where = p.target
            if where is not None and where[0] == target:
                value = params[p.name]
                out[where[1]] = p.convert(value) if p.convert is not None else value
        return out

    def docstring(self, indent: str = "    ") -> str:
        """The ``Parameters`` entries, numpydoc style."""
        lines = []
        for g in self.groups:
            lines.append(f"{indent}{', '.join(p.name for p in g.params)} : {g.type}")
            lines.append(textwrap.fill(g.doc, 88, initial_indent=indent * 2,
                                       subsequent_indent=indent * 2))
        return "\n".join(lines)

    def markdown_table(self) -> str:
        """The documentation's table: names, defaults, summary, one row per group."""
        rows = ["| parameters | default | meaning |", "|---|---|---|"]
        for g in self.groups:
            names = ", ".join(f"`{p.name}`" for p in g.params)
            defaults = ", ".join(_show(p.default) for p in g.params)
            rows.append(f"| {names} | {defaults} | {g.summary} |")
        return "\n".join(rows)


def _show(value: Any) -> str:
    if isinstance(value, str):
        return f'`"{value}"`'
    if isinstance(value, tuple):
        return "`(" + ", ".join(f'"{v}"' for v in value) + ")`"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


T = TypeVar("T", bound=type)


def declared(declaration: Declaration) -> Callable[[T], T]:
    """Class decorator: the estimator's ``__init__`` (storing each parameter as given,
    as scikit-learn requires), its ``__signature__``, ``_parameter_constraints``,
    ``_hyperparameters`` and the docstring's ``Parameters`` entries, all from
    ``declaration``. A subclass may be decorated again with an extended declaration."""
    signature = declaration.signature()
    names = [p.name for p in declaration]

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        for name in names:
            setattr(self, name, bound.arguments[name])

    __init__.__signature__ = signature  # type: ignore[attr-defined]

    def decorate(cls: T) -> T:
        __init__.__qualname__ = f"{cls.__qualname__}.__init__"
        cls.__init__ = __init__  # type: ignore[misc]
        target: Any = cls  # class attributes the decorated class does not declare
        target._parameter_constraints = declaration.constraints()
        target._hyperparameters = declaration
        template = cls.__dict__.get("__doc__") or getattr(cls, "_doc_template", None)
        if template is not None:
            target._doc_template = template
            if PARAMETERS_MARKER not in template:
                raise ValueError(f"{cls.__name__}'s docstring lacks {PARAMETERS_MARKER}")
            cls.__doc__ = template.replace(f"    {PARAMETERS_MARKER}",
                                           declaration.docstring())
        return cls

    return decorate

