"""Assigning several values at once → plain assignments, before any other pass reads the program.

`x, y = e1, e2` assigns simultaneously: every right side reads the values from before the
statement (Python's and numpy users' meaning: `U, V = U - a * gU, V - a * gV`). `x, y = f(...)`
takes the values of a def that ends `return a, b`.

Why a rewrite and not a statement of its own: every later pass (the checker, the interpreter,
the dataflow builder, the loop analyses) reads `Assign`s one target at a time, and a
simultaneous assignment is only a matter of which values the right sides read. Ordering the
assignments so that no right side reads a target already assigned gives that exactly; where
the reads form a cycle (a swap, `U, V = f(U, V), g(U, V)`), one target of the cycle is first
assigned to a temporary `x'` (a name no program can write) and copied after the others. A
copy costs nothing compiled: the copy is the same graph node.

A def of several values is called once per value (`Call.part`): each call inlines the whole
body and returns one of its values. The dataflow graph is hash-consed, so the calls share
every node and the model computes the body once.
"""
from __future__ import annotations

from dataclasses import replace

from . import ast
from ..errors import ProgramError


def expand_multi_assignments(prog: ast.Program) -> None:
    """Rewrite every MultiAssign of `prog` (its body and its defs' bodies) in place; refuse a
    call of a several-valued def anywhere but as the whole right side of one."""
    arity = {name: _arity(fn, prog) for name, fn in prog.functions.items()}
    prog.functions = {name: replace(fn, body=_block(fn.body, arity, prog))
                      for name, fn in prog.functions.items()}
    prog.body = list(_block(tuple(prog.body), arity, prog))
    for node, _ in ast.walk([prog.body, list(prog.functions.values())]):
        if isinstance(node, ast.Call) and node.part is None and arity.get(node.func, 1) > 1:
            k = arity[node.func]
            names = ", ".join(f"v{i + 1}" for i in range(k))
            raise ProgramError(f"'{node.func}' returns {k} values, so a call of it is the whole "
                               "right side of an assignment", node.loc, source=prog.source,
                               expected=f"{k} names to take them: {names} = {node.func}(...)")


def _arity(fn: ast.FuncDef, prog: ast.Program) -> int:
    """How many values `fn` returns: the same from each of its returns."""
    returns = [n for n, _ in ast.walk(fn.body) if isinstance(n, ast.Return)]
    if not returns:
        return 1        # the checker says that a def must end with `return`
    k = len(returns[0].values)
    for r in returns[1:]:
        if len(r.values) != k:
            raise ProgramError(f"this return gives {len(r.values)} value(s), the one at line "
                               f"{returns[0].loc.line} gives {k}", r.loc, source=prog.source,
                               expected=f"the same number of values from every return of "
                                        f"'{fn.name}'")
    return k


def _block(stmts: tuple, arity: dict, prog: ast.Program) -> tuple:
    out: list = []
    for stmt in stmts:
        if isinstance(stmt, ast.MultiAssign):
            out.extend(_assignments(stmt, arity, prog))
        elif isinstance(stmt, ast.Repeat):
            out.append(replace(stmt, body=_block(stmt.body, arity, prog)))
        else:
            out.append(stmt)
    return tuple(out)


def _assignments(m: ast.MultiAssign, arity: dict, prog: ast.Program) -> list[ast.Assign]:
    """The plain assignments `m` means, in an order where no right side reads a target
    assigned before it (a temporary where the reads form a cycle)."""
    for i, name in enumerate(m.targets):
        if name in m.targets[:i]:
            raise ProgramError(f"'{name}' is assigned twice in one statement", m.target_locs[i],
                               source=prog.source, expected="each name once on the left")
    values = m.values
    if len(values) == 1 and isinstance(values[0], ast.Call) and arity.get(values[0].func, 1) > 1:
        call = values[0]
        values = tuple(replace(call, part=i) for i in range(arity[call.func]))
        if len(values) != len(m.targets):
            raise ProgramError(f"{len(m.targets)} names on the left, but '{call.func}' returns "
                               f"{len(values)} values", m.loc, source=prog.source,
                               expected=f"{len(values)} names")
    elif len(values) != len(m.targets):
        single = (len(values) == 1 and isinstance(values[0], ast.Call)
                  and values[0].func in prog.functions)
        raise ProgramError(
            f"{len(m.targets)} names on the left, {len(values)} value(s) on the right"
            + (f" ('{values[0].func}' returns one value)" if single else ""), m.loc,
            source=prog.source,
            expected="one value per name: x, y = e1, e2" + (
                f", or 'return a, b' at the end of '{values[0].func}'" if single else ""))
    reads = [{n.id for n, _ in ast.walk(v) if isinstance(n, ast.Name)} for v in values]
    pending = list(range(len(values)))
    out: list[ast.Assign] = []
    copies: list[ast.Assign] = []
    while pending:
        ready = [i for i in pending
                 if not any(m.targets[i] in reads[j] for j in pending if j != i)]
        i = ready[0] if ready else pending[0]
        pending.remove(i)
        name, loc = m.targets[i], m.target_locs[i]
        if ready:
            out.append(ast.Assign(name, values[i], loc, m.tol, m.tol_rel))
        else:       # every pending target is read by another pending value: a cycle
            temp = f"{name}'"
            out.append(ast.Assign(temp, values[i], loc, m.tol, m.tol_rel))
            copies.append(ast.Assign(name, ast.Name(temp, loc), loc))
    return out + copies
