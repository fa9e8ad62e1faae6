"""Which params a shared build may take at run time: those used only as whole repeat counts.

A shared build (compiler/steady_state.py) stores each loop body once, so how often it runs is
not part of the weights — but only when the count is nothing else: a param that also sets a
domain (`on [0, steps]`), an input bound, another param or any arithmetic shapes the weights
and stays fixed. The rule is syntactic, so the language reference can state it in one line:
a param is a run-time count when every mention of it is a `repeat` count on its own
(`repeat steps`), or an argument passed to a function parameter that is itself used only so
(`inverse_newton(H, inv_steps, ...)` with `repeat k` inside).
"""
from __future__ import annotations

import weakref

from . import ast

# program (by identity; a parsed program is not changed after parsing) → its run-time counts:
# a shared build walks the program a dozen times (newton_logistic: 9 unrollings), and this
# walk of the whole syntax tree was a fifth of each
_COUNTS: dict[int, tuple[weakref.ref, frozenset]] = {}


def run_time_counts(program: ast.Program) -> frozenset[str]:
    """The params of `program` that only count repeats (directly or through functions)."""
    held = _COUNTS.get(id(program))
    if held is not None and held[0]() is program:
        return held[1]
    found = _run_time_counts(program)
    key = id(program)
    _COUNTS[key] = (weakref.ref(program, lambda _r: _COUNTS.pop(key, None)), found)
    return found


def _run_time_counts(program: ast.Program) -> frozenset[str]:
    count_only = _count_only_function_params(program)
    names = {p.name for p in program.params}
    uses: dict[str, list] = {name: [] for name in names}
    for node, parent in ast.walk(program, None):
        if isinstance(node, ast.Name) and node.id in uses:
            uses[node.id].append((node, parent))
    return frozenset(name for name, found in uses.items() if found and all(
        _counts(program, node, parent, count_only) for node, parent in found))


def loop_key(stmt: ast.Repeat, call_sites: list[ast.Call]) -> str:
    """A loop's name in a build and at run time ("line:col" of the repeat, after the call
    sites inlining it): the shared build's LoopSpec.key, and the loop a halting rule names."""
    where = [f"{c.loc.line}:{c.loc.column}" for c in call_sites]
    return ">".join(where + [f"{stmt.loc.line}:{stmt.loc.column}"])


def loop_param(program: ast.Program, stmt: ast.Repeat, call_sites: list[ast.Call],
               counts: set[str]) -> str | None:
    """The run-time param that sets this loop's count (None if the count is fixed): follow a
    function parameter out through the calls being inlined (outermost first)."""
    e = stmt.count
    for call in reversed(call_sites):
        if not isinstance(e, ast.Name):
            return None
        if e.id in counts:
            return e.id
        fn = program.functions[call.func]
        if e.id not in fn.params:
            return None
        e = call.args[fn.params.index(e.id)]
    return e.id if isinstance(e, ast.Name) and e.id in counts else None


def _counts(program: ast.Program, node: ast.Name, parent, count_only: dict[str, set[str]]) -> bool:
    """Is this mention of a name a whole repeat count (or passed on to one)?"""
    if isinstance(parent, ast.Repeat) and parent.count is node:
        return True
    if isinstance(parent, ast.Call) and parent.func in count_only:
        params = program.functions[parent.func].params
        idx = [i for i, a in enumerate(parent.args) if a is node]
        return bool(idx) and all(i < len(params) and params[i] in count_only[parent.func]
                                 for i in idx)
    return False


def _count_only_function_params(program: ast.Program) -> dict[str, set[str]]:
    """For every function, its parameters used only as repeat counts (a greatest fixpoint:
    start from all and drop any with another use until nothing changes)."""
    result: dict[str, set[str]] = {name: set(fn.params) for name, fn in program.functions.items()}
    changed = True
    while changed:
        changed = False
        for name, fn in program.functions.items():
            keep = set()
            for p in result[name]:
                found = [(n, parent) for n, parent in ast.walk(fn.body, None)
                         if isinstance(n, ast.Name) and n.id == p]
                assigned = any(isinstance(n, ast.Assign) and n.target == p for n, _ in ast.walk(fn.body, None))
                if found and not assigned and all(_counts(program, n, parent, result) for n, parent in found):
                    keep.add(p)
            if keep != result[name]:
                result[name], changed = keep, True
    return result


__all__ = ["run_time_counts", "loop_param"]
