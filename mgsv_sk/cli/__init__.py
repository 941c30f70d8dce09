"""The ``mgsv-sk`` command line (also ``python -m mgsv_sk``): the parser and error
reporting (``_parser``) and one function per command (``commands``).

The top of the package: may import anything of :mod:`mgsv_sk` and ``export`` (lazily,
inside the command that needs it, so ``--help`` stays instant); nothing imports it back.
"""

from ._parser import PROG, USER_ERRORS, build_parser, main, one_line

__all__ = ["PROG", "USER_ERRORS", "build_parser", "main", "one_line"]
