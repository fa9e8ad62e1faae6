"""Text → AST. Lark (LALR) reads `grammar.lark`; a Transformer turns its tree into `ast` nodes.

Lark's own exceptions never escape: they become `ProgramSyntaxError` with the file, line,
column, the source line, and the tokens that would have been accepted, in words.
"""
from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

import lark
from lark import Lark, Token, Transformer, v_args

from . import ast
from .multi_assign import expand_multi_assignments
from .nesting import too_deep
from ..errors import ProgramError, ProgramSyntaxError, SourceLocation, TcompileError

_TOKEN_WORDS = {
    "NAME": "a name", "NUMBER": "a number", "INT": "an integer", "_NL": "end of line",
    "LPAR": "'('", "RPAR": "')'", "LSQB": "'['", "RSQB": "']'", "LBRACE": "'{'",
    "RBRACE": "'}'", "COMMA": "','", "COLON": "':'", "EQUAL": "'='", "PLUS": "'+'",
    "MINUS": "'-'", "STAR": "'*'", "SLASH": "'/'", "__ANON_0": "'@'", "SEMICOLON": "';'",
    "_ON": "'on'", "_TOL": "'tol'", "REL": "'rel'", "_ASSUME": "'assume'", "$END": "end of file",
}


class _BracketsJoinLines:
    """A line break inside ( ) or [ ] continues the expression, as in Python: the lexer's
    end-of-line tokens there are dropped (inside { } they still separate statements)."""
    always_accept = ("_NL",)

    def __init__(self):
        self.open: list = []        # the brackets open where the lexer is now (for errors)

    def process(self, stream):
        self.open = []
        for tok in stream:
            if tok.type in ("LPAR", "LSQB"):
                self.open.append(tok)
            elif tok.type in ("RPAR", "RSQB"):
                if self.open:
                    self.open.pop()
            elif tok.type == "_NL" and self.open:
                continue
            yield tok


@lru_cache(maxsize=1)
def _parser() -> Lark:
    grammar = (Path(__file__).parent / "grammar.lark").read_text()
    return Lark(grammar, parser="lalr", propagate_positions=True, maybe_placeholders=True,
                postlex=_BracketsJoinLines())


def _describe_expected(parser: Lark, names) -> str:
    words = set()
    for name in names:
        if name in _TOKEN_WORDS:
            words.add(_TOKEN_WORDS[name])
            continue
        try:
            pattern = parser.get_terminal(name).pattern
        except KeyError:
            words.add(name.lower())
            continue
        if isinstance(pattern, lark.lexer.PatternStr):
            words.add(f"'{pattern.value}'")
        else:
            words.add(name.lower())
    return ", ".join(sorted(words))


@v_args(meta=True)
class _ToAst(Transformer):
    def __init__(self, file: str, source: str):
        super().__init__()
        self.file = file
        self.source = source

    def _loc(self, meta) -> SourceLocation:
        return SourceLocation(self.file, getattr(meta, "line", 1), getattr(meta, "column", 1),
                              getattr(meta, "end_line", None), getattr(meta, "end_column", None))

    def _tok_loc(self, tok) -> SourceLocation:
        return SourceLocation(self.file, tok.line, tok.column)

    # expressions
    def number(self, meta, children):
        return ast.Number(float(children[0]), self._loc(meta))

    def name(self, meta, children):
        return ast.Name(str(children[0]), self._loc(meta))

    def _bin(op):  # noqa: N805 - helper building one method per operator
        def method(self, meta, children):
            return ast.BinOp(op, children[0], children[1], self._loc(meta))
        return method

    add, sub, mul = _bin("+"), _bin("-"), _bin("*")
    matmul, pow = _bin("@"), _bin("**")

    def div(self, meta, children):
        """`a / b`; `a / (b) on [lo, hi] [tol eps]` is the divisor's domain (and the
        reciprocal's budget), the same node as `a / b on [lo, hi]`."""
        left, right = children
        if isinstance(right, ast.Bound):
            return ast.BinOp("/", left, right.operand, self._loc(meta), right.domain, right.tol,
                             right.tol_rel)
        return ast.BinOp("/", left, right, self._loc(meta))

    def bounded(self, meta, children):
        operand, domain, tol = children
        value, rel = tol if tol is not None else (None, False)
        return ast.Bound(operand, domain, self._loc(meta), value, rel)

    def div_on(self, meta, children):
        left, right, domain, tol = children
        value, rel = tol if tol is not None else (None, False)
        return ast.BinOp("/", left, right, self._loc(meta), domain, value, rel)

    def tolerance(self, meta, children):
        """(budget, relative?): `tol eps` or `tol rel eps`."""
        return children[1], children[0] is not None

    def neg(self, meta, children):
        return ast.Neg(children[0], self._loc(meta))

    def transpose(self, meta, children):
        return ast.Transpose(children[0], self._loc(meta))

    def index(self, meta, children):
        value, *subscripts = children
        return ast.Index(value, tuple(subscripts), self._loc(meta))

    def slice2(self, meta, children):
        return ast.Slice(children[0], children[1], None, self._loc(meta))

    def slice3(self, meta, children):
        return ast.Slice(children[0], children[1], children[2], self._loc(meta))

    def interval(self, meta, children):
        return ast.Interval(children[0], children[1], self._loc(meta))

    def call(self, meta, children):
        name, *rest = children
        domain, tol = rest[-2], rest[-1]
        args = tuple(a for a in rest[:-2] if a is not None)
        value, rel = tol if tol is not None else (None, False)
        start = self._tok_loc(name)
        loc = SourceLocation(start.file, start.line, start.column,
                             getattr(meta, "end_line", None), getattr(meta, "end_column", None))
        return ast.Call(str(name), args, loc, domain, value, rel)

    # statements
    def assign(self, meta, children):
        value, rel = children[2] if children[2] is not None else (None, False)
        expr = children[1]
        if isinstance(expr, ast.Bound) and expr.tol is not None and value is None:
            # `x = (e) on [lo, hi] tol eps`: the grammar hands the tol to the bound; it is the
            # statement's budget
            value, rel = expr.tol, expr.tol_rel
            expr = ast.Bound(expr.operand, expr.domain, expr.loc)
        return ast.Assign(str(children[0]), expr, self._tok_loc(children[0]), value, rel)

    def multi_assign(self, meta, children):
        *parts, tol = children
        names = [c for c in parts if isinstance(c, Token)]
        values = tuple(c for c in parts if not isinstance(c, Token))
        value, rel = tol if tol is not None else (None, False)
        last = values[-1]
        if isinstance(last, ast.Bound) and last.tol is not None and value is None:
            # as in `assign`: a tol the grammar handed the last value's bound ends the statement
            value, rel = last.tol, last.tol_rel
            values = values[:-1] + (ast.Bound(last.operand, last.domain, last.loc),)
        return ast.MultiAssign(tuple(str(t) for t in names), tuple(self._tok_loc(t) for t in names),
                               values, self._tok_loc(names[0]), value, rel)

    def repeat(self, meta, children):
        return ast.Repeat(children[0], children[1], self._loc(meta))

    def return_stmt(self, meta, children):
        return ast.Return(tuple(children), self._loc(meta))

    def block(self, meta, children):
        return tuple(children)

    # declarations
    def header(self, meta, children):
        return ("header", str(children[0]), self._loc(meta))

    def param(self, meta, children):
        return ast.Param(str(children[0]), children[1], self._tok_loc(children[0]))

    def dim(self, meta, children):
        return ast.Dim(str(children[0]), children[1], self._tok_loc(children[0]))

    def shape(self, meta, children):
        dims = []
        for tok in children:
            if tok is None:
                continue
            value = int(tok) if tok.type == "INT" else str(tok)
            dims.append(ast.ShapeDim(value, self._tok_loc(tok)))
        return tuple(dims)

    def _qual(kind):  # noqa: N805
        def method(self, meta, children):
            loc = self._loc(meta)
            if kind in ("range", "spectrum"):
                return ast.Qualifier(kind, loc, interval=children[0])
            if kind in ("row_norm", "norm"):
                return ast.Qualifier(kind, loc, bound=children[0])
            return ast.Qualifier(kind, loc)
        return method

    q_sign, q_flag, q_symmetric = _qual("sign"), _qual("flag"), _qual("symmetric")
    q_range, q_row_norm = _qual("range"), _qual("row_norm")
    q_norm, q_spectrum = _qual("norm"), _qual("spectrum")

    def input(self, meta, children):
        name, shape, *quals = children
        return ast.Input(str(name), shape, tuple(q for q in quals if q is not None),
                         self._tok_loc(name))

    def output(self, meta, children):
        return [ast.Output(str(t), self._tok_loc(t)) for t in children]

    def funcdef(self, meta, children):
        name, *rest = children
        body = rest[-1]
        tokens = [p for p in rest[:-1] if p is not None]
        return ast.FuncDef(str(name), tuple(str(p) for p in tokens), body, self._tok_loc(name),
                           tuple(self._tok_loc(p) for p in tokens))


def parse_source(source: str, file: str = "<string>") -> ast.Program:
    """Parse program text; raise ProgramSyntaxError/ProgramError (never a Lark exception)."""
    parser = _parser()
    try:
        tree = parser.parse(source)
    except RecursionError:
        raise too_deep(file, source) from None
    except lark.exceptions.UnexpectedCharacters as e:
        _refuse_control_flow(file, source, e.line)
        raise ProgramSyntaxError(
            f"unexpected character {source[e.pos_in_stream]!r}" if e.pos_in_stream < len(source)
            else "unexpected end of input",
            SourceLocation(file, e.line, e.column),
            expected=_describe_expected(parser, e.allowed or ()) or None, source=source) from None
    except lark.exceptions.UnexpectedEOF as e:
        lines = source.split("\n")
        raise ProgramSyntaxError("unexpected end of file",
                                 SourceLocation(file, len(lines), len(lines[-1]) + 1),
                                 expected=_describe_expected(parser, e.expected), source=source) from None
    except lark.exceptions.UnexpectedToken as e:
        _refuse_control_flow(file, source, e.token.line)
        _refuse_index_assignment(file, source, e.token.line)
        tok = e.token
        _refuse_unclosed(parser, file, source, tok)
        _refuse_misplaced_domain(file, source, tok)
        _refuse_unseparated_qualifier(file, source, tok)
        what = "end of file" if tok.type == "$END" else (
            "end of line" if tok.type == "_NL" else f"{str(tok)!r}")
        line = tok.line if tok.line is not None else 1
        col = tok.column if tok.column is not None else 1
        if tok.type == "$END":
            lines = source.rstrip("\n").split("\n")
            line, col = len(lines), len(lines[-1]) + 1
        raise ProgramSyntaxError(f"unexpected {what}", SourceLocation(file, line, col),
                                 expected=_describe_expected(parser, e.accepts or e.expected),
                                 source=source) from None
    except lark.exceptions.LarkError as e:  # anything else Lark may raise on odd input
        raise ProgramSyntaxError(f"cannot parse: {e}", SourceLocation(file, 1, 1), source=source) from None
    try:
        return _build_program(_ToAst(file, source).transform(tree), file, source)
    except lark.exceptions.VisitError as e:
        if isinstance(e.orig_exc, TcompileError):
            raise e.orig_exc from None
        if isinstance(e.orig_exc, RecursionError):
            raise too_deep(file, source) from None
        raise
    except RecursionError:
        raise too_deep(file, source) from None


def _refuse_unclosed(parser: Lark, file: str, source: str, tok) -> None:
    """A parse error on a later line than an unclosed '(' or '[' (whose line breaks were read
    as continuing the expression): point at the bracket, as Python does."""
    opened = parser.options.postlex.open
    if not opened:
        return
    first = opened[-1]
    line = tok.line if tok.type != "$END" and tok.line is not None else source.count("\n") + 1
    if line <= first.line:
        return
    raise ProgramSyntaxError(f"this '{first}' is never closed", SourceLocation(file, first.line,
                                                                              first.column),
                             expected=f"'{')' if first == '(' else ']'}' before line {line}",
                             source=source)


_INDEX_ASSIGNMENT = re.compile(r"[ \t]*(?:[A-Za-z_][A-Za-z0-9_]*[ \t]*,[ \t]*)*"
                               r"([A-Za-z_][A-Za-z0-9_]*)[ \t]*\[[^\n]*\][ \t]*(?:,[^\n=]*)?=(?!=)")


def _refuse_index_assignment(file: str, source: str, line: int | None) -> None:
    """`y[0] = ...` (or `y[0], z = ...`) fails to parse at the '['; say that values are
    assigned whole, and how to build one from its entries."""
    lines = source.split("\n")
    if line is None or not 1 <= line <= len(lines):
        return
    m = _INDEX_ASSIGNMENT.match(lines[line - 1])
    if m is None:
        return
    raise ProgramSyntaxError(
        f"cannot assign to part of '{m.group(1)}': a variable is assigned whole",
        SourceLocation(file, line, m.start(1) + 1), source=source,
        expected="build the value from its parts, e.g. y = stack(a, b, c) for a vector or "
                 "stack(row0, row1) for a matrix")


def _refuse_misplaced_domain(file: str, source: str, tok) -> None:
    """`on [lo, hi]` binds only to a call, a parenthesized expression or a division; after
    anything else (`2 * x on [-2, 2]`, `exp(beta * L on [...])`) the parser's own list of
    what could come next (';', 'tol', end of line) does not say where the bound belongs."""
    if tok.type != "_ON":
        return
    before = source.split("\n")[tok.line - 1][:tok.column - 1]
    if re.search(r"\btol\s+(rel\s+)?\S+\s*$", before):
        raise ProgramSyntaxError("'on [lo, hi]' comes before 'tol'",
                                 SourceLocation(file, tok.line, tok.column), source=source,
                                 expected="f(x) on [lo, hi] tol eps")
    raise ProgramSyntaxError(
        "'on [lo, hi]' cannot follow this expression: it bounds a call, a parenthesized "
        "expression or a division", SourceLocation(file, tok.line, tok.column), source=source,
        expected="parentheses around what it bounds, e.g. (2 * x) on [lo, hi], or f(x) on "
                 "[lo, hi] for a builtin call, or x / y on [lo, hi]")


_QUALIFIER_WORDS = {"assume", "sign", "flag", "symmetric", "in", "row_norm", "norm", "spectrum"}


def _refuse_unseparated_qualifier(file: str, source: str, tok) -> None:
    """`input S : [k, k] symmetric assume norm <= 1`: a second qualifier without a comma (or
    `assume` before it) met the parser's list of what may follow (',', ';', end of line),
    which does not say that qualifiers are separated by commas, `assume` only before the
    first. The line as it would parse is the expected text."""
    if str(tok) not in _QUALIFIER_WORDS or tok.line is None:
        return
    text = source.split("\n")[tok.line - 1]
    before, after = text[:tok.column - 1], text[tok.column - 1:]
    if not re.match(r"\s*input\b[^:]*:\s*\[[^\]]*\]\s*\S", before):
        return
    rest = re.sub(r"^assume\s+", "", after.split("#")[0].strip())
    raise ProgramSyntaxError(
        f"'{tok}' after a qualifier: qualifiers are separated by commas, and 'assume' may "
        "only come before the first", SourceLocation(file, tok.line, tok.column), source=source,
        expected=f"{before.rstrip()}, {rest}".strip())


_CONTROL_FLOW = re.compile(r"[ \t]*(if|while|for|else|elif)\b(?![ \t]*=[^=])")


def _refuse_control_flow(file: str, source: str, line: int | None) -> None:
    """A line that fails to parse and starts with `if`/`while`/...: say what the language has
    instead of reporting the token after the keyword (which the grammar reads as a name)."""
    lines = source.split("\n")
    if line is None or not 1 <= line <= len(lines):
        return
    m = _CONTROL_FLOW.match(lines[line - 1])
    if m is None:
        return
    raise ProgramSyntaxError(
        f"'{m.group(1)}': the language has no data-dependent control flow (every program runs "
        "the same fixed sequence of operations, unrolled at compile time)",
        SourceLocation(file, line, m.start(1) + 1), source=source,
        expected="'repeat COUNT { ... }' with a compile-time count for loops; for a choice, "
                 "compute both sides and blend them: max(u, v), min(u, v), clip(x, lo, hi), relu, "
                 "or a flag input f: f * a + (1 - f) * b")


def _build_program(tree, file: str, source: str) -> ast.Program:
    header = tree.children[0]
    _, name, loc = header
    prog = ast.Program(name=name, loc=loc, source=source, file=file)
    for item in tree.children[1:]:
        if isinstance(item, ast.Param):
            prog.params.append(item)
        elif isinstance(item, ast.Dim):
            prog.dims.append(item)
        elif isinstance(item, ast.Input):
            prog.inputs.append(item)
        elif isinstance(item, list):
            prog.outputs.extend(item)
        elif isinstance(item, ast.FuncDef):
            _add_function(prog, item)
        elif isinstance(item, ast.Return):
            raise ProgramError("'return' outside a function", item.loc,
                               expected="an assignment or 'repeat'", source=source)
        else:
            prog.body.append(item)
    expand_multi_assignments(prog)
    return prog


def _add_function(prog: ast.Program, fn: ast.FuncDef) -> None:
    if fn.name in prog.functions:
        first = prog.functions[fn.name].loc
        raise ProgramError(f"function '{fn.name}' is defined twice (first at line {first.line})",
                           fn.loc, expected="a new function name", source=prog.source)
    prog.functions[fn.name] = fn


MAX_PROGRAM_BYTES = 4 * 2 ** 20     # a program is text a person wrote: far less than this


def parse_file(path) -> ast.Program:
    """Parse a program file: a regular file (not a FIFO or a device such as /dev/zero) of at
    most MAX_PROGRAM_BYTES of UTF-8 text (runtime/files.py reads it, bounded)."""
    from ..runtime.files import read_regular
    try:
        source = read_regular(path, MAX_PROGRAM_BYTES).decode()
    except OSError as e:
        raise TcompileError(f"cannot read program file {str(path)!r}: "
                            f"{e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise TcompileError(f"cannot read program file {str(path)!r}: {e}") from None
    return parse_source(source.replace("\r\n", "\n").replace("\r", "\n"), str(path))
