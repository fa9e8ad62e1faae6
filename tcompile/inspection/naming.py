"""Names a user recognises for what the compiler stored: source lines instead of temporaries.

The layout names stored values `x@3` (the fourth assignment to x) and, for values no program
variable holds, compiler temporaries (`tmp72`); approximated functions are named by their leaf
expression (`reciprocal(sqrt((gᵀ@t72@g)) + 0.632456)`). The model card, plots and trace show
instead the user's own text: `x@3` is "x (line 38)", found by re-walking the program's
assignments with the checker; an approximation is the source statements that apply its
functions. That second link is a match by function name (the manifest records no source
position for a piece), which is exact for the usual one-call-per-function programs and lists
every candidate line otherwise — the card says it matched by name.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from ..language import ast
from ..language.checker import Walker

_CALL = re.compile(r"([A-Za-z_]\w*)\(")
_PRODUCT = " of u*v = "            # how the compiler names the square pieces of a product


@dataclass(frozen=True)
class SourceLine:
    line: int
    text: str                      # the statement as written, trimmed

    def __str__(self) -> str:
        return f"line {self.line}: {self.text}"


class _AssignmentLines(Walker):
    """The checker's walk, keeping the source line of every top-level assignment (`x@k`)."""

    def __init__(self, program, params):
        super().__init__(program, params)
        self.lines: dict[str, int] = {}

    def _assign(self, stmt, env):
        super()._assign(stmt, env)
        point = self.program_point(stmt)
        if point is not None:
            self.lines[point] = stmt.loc.line


def assignment_lines(program: ast.Program, params: dict[str, float]) -> dict[str, int]:
    """`name@k` → the line of the statement that made the k-th assignment to name."""
    walker = _AssignmentLines(program, params)
    walker.run()
    return walker.lines


_TEMP = re.compile(r"\b(?:tmp|t)\d+\b")


def readable(expr: str) -> str:
    """A compiler expression with its temporaries (`t72`, `tmp75`) shown as `(…)`: an
    intermediate value the program never named."""
    return _TEMP.sub("(…)", expr)


def value_name(var: str, lines: dict[str, int]) -> str:
    """`x@3` → "x (line 38)"; an input or constant key → its name; a temporary stays."""
    base, _, _ = var.partition("@")
    if var in lines:
        return f"{base} (line {lines[var]})"
    if var.startswith("input:"):
        return f"{var[6:]} (input)"
    if var.startswith("const:"):
        return {"const:eye": "I", "const:ones": "ones", "const:inv_n": "1/n",
                "const:eye_inv_n": "I/n"}.get(var, var[6:])
    return var


def block_name(blk, lines: dict[str, int]) -> str:
    """A layout Block as the user would call it (the variable it holds last, or its key)."""
    if blk.vars:
        return value_name(blk.vars[-1], lines) + ("ᵀ" if blk.transposed else "")
    key = blk.key[:-2] if blk.key.endswith(".T") else blk.key
    return value_name(key, lines) + ("ᵀ" if blk.transposed else "")


def approximation_sources(program: ast.Program, name: str) -> list[SourceLine]:
    """The statements that apply the functions an approximation is named by.

    `sigmoid(...)` matches statements calling sigmoid on a runtime value; `reciprocal(...)`
    matches divisions by a runtime value; a product's square pieces (`(u+v)^2 of u*v = F*G`)
    match elementwise products whose operands name F's and G's leaves (directly, or through
    the assignment of a variable the compiler fused away)."""
    source = program.source.split("\n")
    runtime = _runtime_names(program)
    if _PRODUCT in name:
        factors = [_idents_of_text(f) for f in _top_level_factors(name.split(_PRODUCT, 1)[1])]
        test = _product_test(factors, _definitions(program), runtime)
    else:
        wanted = set(_CALL.findall(name))
        test = _call_test(wanted, runtime)
    hits = {SourceLine(stmt.loc.line, source[stmt.loc.line - 1].split("#")[0].strip())
            for stmt in _statements(program) if _any_node(stmt.value, test)}
    return sorted(hits, key=lambda s: s.line)


def _call_test(wanted: set[str], runtime: set[str]):
    def test(node) -> bool:
        if isinstance(node, ast.Call):
            return node.func in wanted and bool(_names(node) & runtime)
        return (isinstance(node, ast.BinOp) and node.op == "/" and "reciprocal" in wanted
                and bool(_names(node.right) & runtime))
    return test


def _product_test(factors: list[set[str]], defs: dict[str, set[str]], runtime: set[str]):
    def fits(operand, factor: set[str]) -> bool:
        direct = _idents(operand)
        expanded = set().union(*(defs.get(v, {v}) for v in direct)) if direct else set()
        return factor in (direct, expanded)

    def test(node) -> bool:
        if not (isinstance(node, ast.BinOp) and node.op == "*" and len(factors) == 2):
            return False
        if not (_names(node.left) & runtime and _names(node.right) & runtime):
            return False
        f, g = factors
        return (fits(node.left, f) and fits(node.right, g)) or (fits(node.left, g) and fits(node.right, f))
    return test


def _top_level_factors(text: str) -> list[str]:
    """`A*[s(z)*(1 - s(z))]` → ["A", "[s(z)*(1 - s(z))]"]: split at * outside brackets."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += ch in "([" and 1 or (-1 if ch in ")]" else 0)
        if ch == "*" and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    return parts + [text[start:]]


def _idents_of_text(text: str) -> set[str]:
    return set(re.findall(r"[A-Za-z_]\w*", text))


def _definitions(program: ast.Program) -> dict[str, set[str]]:
    """Variable → the identifiers (names and functions) of every expression assigned to it."""
    defs: dict[str, set[str]] = {}
    for stmt in _statements(program):
        if isinstance(stmt, ast.Assign):
            defs.setdefault(stmt.target, set()).update(_idents(stmt.value))
    return defs


def _any_node(e, test) -> bool:
    stack = [e]
    while stack:
        node = stack.pop()
        if test(node):
            return True
        stack.extend(_children(node))
    return False


def _statements(program: ast.Program):
    """Every assignment and return, top level and in function bodies, loops entered."""
    todo = list(program.body) + [s for fn in program.functions.values() for s in fn.body]
    while todo:
        stmt = todo.pop()
        if isinstance(stmt, ast.Repeat):
            todo.extend(stmt.body)
        else:
            yield stmt


def _runtime_names(program: ast.Program) -> set[str]:
    """Names that hold data at run time: inputs, assigned variables, and the parameters of a
    function some call passes a runtime value in (`inverse_newton(H, k, mu, mu + 0.25)`:
    M is runtime, k, lo and hi are constants)."""
    names = {d.name for d in program.inputs}
    names |= {s.target for s in _statements(program) if isinstance(s, ast.Assign)}
    calls = [node for stmt in _statements(program) for node in _walk(stmt.value)
             if isinstance(node, ast.Call) and node.func in program.functions]
    for call in calls:
        params = program.functions[call.func].params
        names |= {p for p, arg in zip(params, call.args) if _names(arg) & names}
    return names


def _walk(e):
    stack = [e]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(_children(node))


def _idents(e) -> set[str]:
    """Names and called functions in an expression."""
    return {n.id if isinstance(n, ast.Name) else n.func for n in _walk(e)
            if isinstance(n, (ast.Name, ast.Call))}


def _names(e) -> set[str]:
    return {n.id for n in _walk(e) if isinstance(n, ast.Name)}


def _children(e) -> tuple:
    if isinstance(e, ast.BinOp):
        return (e.left, e.right)
    if isinstance(e, (ast.Neg, ast.Transpose)):
        return (e.operand,)
    if isinstance(e, ast.Call):
        return tuple(e.args)
    return ()


__all__ = ["readable", "SourceLine", "assignment_lines", "value_name", "block_name", "approximation_sources"]
