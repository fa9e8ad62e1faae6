"""How many tokens a program's subscripts read: the runtime asks when data has fewer tokens
than a compiled model needs, to say why (a subscript such as `A[5, :]` reads token 5)."""
from __future__ import annotations

from . import ast
from .checker import Walker
from .indexing import token_reach


def tokens_read(program: ast.Program, params: dict) -> int:
    """The checker's walk, recording every subscript's picks: the most tokens one reads (0 if
    none touches the token axis)."""

    class _Reach(Walker):
        reach = 0

        def apply(self, op, ty, args, node):
            if op == "index":
                self.reach = max(self.reach, token_reach(node[1], args[0].ty.shape))
            return super().apply(op, ty, args, node)

    walker = _Reach(program, params)
    walker.run()
    return walker.reach
