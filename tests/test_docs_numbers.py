"""README.md's tables and the docs' headline numbers, re-measured on a fresh build.

Each claim below names a document, a table (by a header cell only that table has), a row (by
the text its first cell starts with) and a column, and says what that cell must hold in terms
of a measurement: whole numbers (layers, width, widest MLP, parameters, bytes) must appear
exactly as the build gives them; a formula (`T + 2`) must be written there and give the built
value at the build's params; an error on random data must be within a stated factor of what
is measured here (rounding-level errors differ in their last digits between machines and BLAS
kernels, hence the factor 10; an error set by a fitted function, within 2). Prose figures are
claimed by a regular expression whose group must equal the measurement.

To keep a new table row true: add a `Cell` (or a `Prose`) to CLAIMS; the test walks them all.
A row the claims do not know is not checked, so `test_every_program_row_is_claimed` fails
when README's program table gains a row without claims. Builds are cached per (program,
params, loops): every default build of `programs/` takes ~10 s in all; nothing else is slow.
"""
from __future__ import annotations

import functools
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

import builds
import tcompile

ROOT = Path(__file__).resolve().parents[1]
PROGRAMS = ROOT / "programs"


# ---- measurements (cached: several claims read one build) ----------------------------------

def build(name: str, loops: str = "unrolled", **params):
    """The session's build (tests/builds.py), shared with test_programs_structured's oracles."""
    return builds.build(name, params, loops=loops)


def report(name: str, loops: str = "unrolled", **params) -> dict:
    return build(name, loops, **params).report


@functools.lru_cache(maxsize=None)
def artifact_bytes(name: str, loops: str = "unrolled", **params) -> int:
    with tempfile.TemporaryDirectory() as d:
        build(name, loops, **params).save(os.path.join(d, name))
        return os.path.getsize(os.path.join(d, f"{name}.safetensors"))


@functools.lru_cache(maxsize=None)
def check_error(name: str) -> float:
    """What `tcompile check programs/NAME.tp` prints as the worst relative error: 8 random
    problems, n = max(16, 2 min_tokens), seed 0, the largest over the outputs."""
    from tcompile.inspection.reference import relative_error
    from tcompile.inspection.sampling import sample_inputs
    prog = build(name)
    n = max(16, 2 * prog.layout.min_tokens)
    inputs = sample_inputs(prog.program, {}, n=n, batch=8, seed=0)
    got = prog.run(**inputs)
    want = tcompile.interpret_program(prog.program, {}, **inputs)
    return max(relative_error(got[k], want[k]) for k in want)


# The library rows' oracles: one problem per seed, (inputs, the oracle's answer); README's
# last column is the largest relative error (max |got - ref| / max |ref|) over seeds 0-4, at
# the program's defaults. Data as tests/test_library.py draws it.

def _unit_rows(rng, n: int, d: int) -> np.ndarray:
    A = rng.standard_normal((n, d))
    return A / np.linalg.norm(A, axis=1, keepdims=True) * rng.uniform(0.5, 1.0, (n, 1))


def _orthogonal(rng, d: int = 4) -> np.ndarray:
    return np.linalg.qr(rng.standard_normal((d, d)))[0]


def _lstsq(rng):
    A, y = _unit_rows(rng, 200, 4), rng.standard_normal(200)
    return {"A": A, "y": y}, np.linalg.lstsq(A, y, rcond=None)[0]


def _ridge(rng):
    from sklearn.linear_model import Ridge
    A, y = _unit_rows(rng, 30, 4), rng.standard_normal(30)
    return {"A": A, "y": y}, Ridge(alpha=30 * 0.1, fit_intercept=False,
                                   solver="cholesky").fit(A, y).coef_


def _inverse(rng):
    A = _orthogonal(rng) @ np.diag([1.0, 0.7, 0.4, 0.2]) @ _orthogonal(rng)
    return {"A": A}, np.linalg.inv(A)


def _sign(rng):
    import scipy.linalg
    Q = _orthogonal(rng)
    A = Q @ np.diag([0.9, 0.1, -0.05, -0.6]) @ Q.T
    return {"A": A}, scipy.linalg.signm(A)


def _sqrt(rng):
    import scipy.linalg
    Q = _orthogonal(rng)
    A = Q @ np.diag([1.0, 0.6, 0.25, 0.1]) @ Q.T
    return {"A": A}, scipy.linalg.sqrtm(A).real


def _logistic(rng):
    from sklearn.linear_model import LogisticRegression
    A = _unit_rows(rng, 26, 5)
    y = np.where(A @ rng.standard_normal(5) + 0.3 * rng.standard_normal(26) > 0, 1.0, -1.0)
    return {"A": A, "y": y}, LogisticRegression(C=1 / (26 * 0.1), fit_intercept=False, tol=1e-12,
                                                max_iter=10_000).fit(A, y).coef_[0]


def _lasso(rng):
    from sklearn.linear_model import Lasso
    A = _unit_rows(rng, 200, 5)
    y = A @ np.array([1.0, 0.0, -0.5, 0.0, 0.02]) + 0.05 * rng.standard_normal(200)
    return {"A": A, "y": y}, Lasso(alpha=0.05, fit_intercept=False, tol=1e-14,
                                   max_iter=100_000).fit(A, y).coef_


def _jacobi(rng):
    m, C, b = rng.uniform(1, 10, 5), rng.uniform(-0.2, 0.2, (5, 5)), rng.standard_normal(5)
    return {"m": m, "C": C, "b": b}, np.linalg.solve(np.diag(m) + C - np.diag(np.diag(C)), b)


def _softmax(rng):
    from sklearn.linear_model import LogisticRegression
    n = 60
    A = _unit_rows(rng, n, 4)
    labels = np.argmax(2 * A @ rng.standard_normal((4, 3)) + 0.5 * rng.standard_normal((n, 3)), 1)
    ref = LogisticRegression(C=1 / (n * 0.5), fit_intercept=False, tol=1e-12,
                             max_iter=10_000).fit(A, labels).coef_.T
    return {"A": A, "Y": np.eye(3)[labels]}, ref


def _elastic_net(rng):
    from sklearn.linear_model import ElasticNet
    A = _unit_rows(rng, 40, 5)
    y = A @ rng.standard_normal(5) + 0.1 * rng.standard_normal(40)
    return {"A": A, "y": y}, ElasticNet(alpha=0.1, l1_ratio=0.5, fit_intercept=False, tol=1e-15,
                                        max_iter=100_000).fit(A, y).coef_


def _huber(rng):
    """Textbook IRLS in numpy (w = min(1, delta / |r|), the weighted ridge problem solved
    exactly), the program's 30 steps; ~15% gross outliers, y clipped to the declared [-3, 3]."""
    n, d, delta, mu = 40, 4, 1.0, 0.1
    A = _unit_rows(rng, n, d)
    y = A @ rng.standard_normal(d) + 0.1 * rng.standard_normal(n)
    out = rng.random(n) < 0.15
    y = np.clip(y + out * rng.uniform(-2.5, 2.5, n), -3, 3)
    x = np.zeros(d)
    for _ in range(30):
        w = np.minimum(1.0, delta / np.maximum(np.abs(y - A @ x), 1e-300))
        x = np.linalg.solve(A.T @ (w[:, None] * A) / n + mu * np.eye(d), A.T @ (w * y) / n)
    return {"A": A, "y": y}, x


def _adam(rng):
    """Adam in numpy as Kingma & Ba write it, the program's 10 steps at lr = 0.1 from x = 0."""
    n, d = 40, 4
    A = _unit_rows(rng, n, d)
    y = np.clip(A @ rng.standard_normal(d) + 0.1 * rng.standard_normal(n), -3, 3)
    S, b = A.T @ A / n, A.T @ y / n
    x, m, v = np.zeros(d), np.zeros(d), np.zeros(d)
    for t in range(1, 11):
        g = S @ x - b
        m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
        x = x - 0.1 * (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.999 ** t)) + 1e-8)
    return {"A": A, "y": y}, x


def _poisson(rng):
    from sklearn.linear_model import PoissonRegressor
    A = _unit_rows(rng, 40, 4)
    x_true = rng.standard_normal(4)
    y = np.minimum(rng.poisson(np.exp(A @ (x_true / max(1.0, np.linalg.norm(x_true))))), 4)
    y = y.astype(float)
    return {"A": A, "y": y}, PoissonRegressor(alpha=1.0, fit_intercept=False, tol=1e-14,
                                              solver="newton-cholesky", max_iter=1000).fit(A, y).coef_


ORACLES = {   # program: (output compared, one seeded problem)
    "gd_least_squares": ("w", _lstsq), "ridge_newton_schulz": ("w", _ridge),
    "cubic_newton_schulz": ("X", _inverse), "newton_schulz_sign": ("X", _sign),
    "newton_schulz_sqrt": ("R", _sqrt), "gd_logistic": ("x", _logistic),
    "ista_lasso": ("x", _lasso), "fista_elastic_net": ("x", _elastic_net),
    "huber_irls": ("x", _huber), "adam_least_squares": ("x", _adam),
    "poisson_newton": ("x", _poisson), "jacobi": ("x", _jacobi), "softmax_regression": ("W", _softmax),
}


# Their first run costs seconds each (the executor plans 121 layers of wide MLPs): checked
# with TCOMPILE_DOCS_ALL=1 only, so that this file stays near 15 s of CPU.
EXPENSIVE = {"gd_logistic", "softmax_regression"}


@functools.lru_cache(maxsize=None)
def oracle_error(name: str) -> float:
    """The largest relative error against the program's oracle over seeds 0-4 (one batched
    run of the default build)."""
    output, problem = ORACLES[name]
    problems = [problem(np.random.default_rng(seed)) for seed in range(5)]
    batch = {k: np.stack([p[0][k] for p in problems]) for k in problems[0][0]}
    got = build(name).run(**batch)[output]
    return max(float(np.max(np.abs(g - ref)) / np.max(np.abs(ref)))
               for g, (_, ref) in zip(got, problems))


# ---- what a cell must hold -------------------------------------------------------------------

NUMBER = re.compile(r"(?<![\w.])\d{1,3}(?:,\d{3})+(?![\d])|(?<![\w.,])\d+(?:\.\d+)?(?:e[+-]?\d+)?")


def numbers_in(text: str) -> list[str]:
    return NUMBER.findall(text)


def whole(measure: Callable[[], int]) -> Callable[[str], None]:
    """The cell holds the measured whole number, written with thousands separators."""
    def check(cell: str) -> None:
        want = f"{measure():,}"
        assert want in numbers_in(cell), f"{want} not in {cell!r}"
    return check


def formula(expr: str, measure: Callable[[], int], **env: int) -> Callable[[str], None]:
    """The cell writes `expr` (over T, k, d, ...), which at `env` gives the measured value."""
    def check(cell: str) -> None:
        assert expr in cell, f"{expr!r} not in {cell!r}"
        python = re.sub(r"(\d)([A-Za-z])", r"\1*\2", expr)          # 3d -> 3*d
        value = eval(python, {"__builtins__": {}}, dict(env))          # noqa: S307
        assert value == measure(), f"{expr} = {value} at {env}, built {measure()}"
    return check


def error_within(measure: Callable[[], float], factor: float, index: int = 0) -> Callable[[str], None]:
    """The cell's `index`-th number in e-notation is within `factor` of the measured error."""
    def check(cell: str) -> None:
        stated = [float(x) for x in re.findall(r"\d(?:\.\d+)?e-\d+", cell)]
        assert len(stated) > index, f"no error figure in {cell!r}"
        got = measure()
        assert stated[index] / factor <= got <= stated[index] * factor, \
            f"stated {stated[index]:.1e}, measured {got:.2e} (factor {factor} allowed)"
    return check


def mlp_width(name: str, **params) -> Callable[[str], None]:
    """`widest MLP N` with the measured N, or `no MLP` when the program has none."""
    def check(cell: str) -> None:
        widest = report(name, **params)["mlp_hidden_max"]
        if widest == 0:
            assert "no MLP" in cell, f"{name} has no MLP; the cell says {cell!r}"
        else:
            assert re.search(rf"widest MLP {widest:,}\b", cell), f"widest MLP {widest:,} not in {cell!r}"
    return check


def all_of(*checks) -> Callable[[str], None]:
    def check(cell: str) -> None:
        for c in checks:
            c(cell)
    return check


# ---- the claims ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Cell:
    doc: str                      # path from the repository root
    table: str                    # a header cell only that table has
    row: str                      # the text the row's first cell starts with
    column: str                   # the header of the cell's column
    check: Callable[[str], None]

    def __str__(self) -> str:
        return f"{self.doc} [{self.table}] {self.row} / {self.column}"


@dataclass(frozen=True)
class Prose:
    doc: str
    pattern: str                  # a regular expression with one group
    measure: Callable[[], str]    # the group's text, from a measurement

    def __str__(self) -> str:
        return f"{self.doc}: {self.pattern}"


def layers(name, loops="unrolled", **p):
    return lambda: report(name, loops, **p)["layers"]


def width(name):
    return lambda: report(name)["width"]


WHAT_IT_BUILDS = "accuracy vs interpreter"           # README's program table
SHARED = "parameters unrolled → shared"                # README's and architecture's shared tables
ARCH_PROGRAMS = "vs interpreter (`tcompile check`)"    # architecture.md §5


def library_row(name: str, **params) -> list[Cell]:
    """A README program-table row below the first three: depth and width as numbers, the
    widest MLP (or `no MLP`), and for a program in ORACLES its error against the oracle."""
    row = f"`{name}`"
    cells = [Cell("README.md", WHAT_IT_BUILDS, row, "layers", whole(layers(name, **params))),
             Cell("README.md", WHAT_IT_BUILDS, row, "width D",
                  all_of(whole(lambda: report(name, **params)["width"]), mlp_width(name, **params)))]
    if name in ORACLES and (name not in EXPENSIVE or os.environ.get("TCOMPILE_DOCS_ALL")):
        # rounding-level errors: within 10x; fitted or contraction-set: 3x
        factor = lambda: 10 if oracle_error(name) < 1e-13 else 3         # noqa: E731
        cells.append(Cell("README.md", WHAT_IT_BUILDS, row, WHAT_IT_BUILDS,
                          lambda cell: error_within(lambda: oracle_error(name), factor())(cell)))
    return cells


def shared_rows(doc: str, unrolled_column: str) -> list[Cell]:
    """A shared-build table's rows: unrolled depth, stored layers (run), parameters both ways."""
    out = []
    for name in ("newton_inverse", "least_squares", "newton_logistic"):
        run = lambda n=name: report(n, "shared")["loops"]["layers_run"]          # noqa: E731
        params = lambda n=name, loops="unrolled": report(n, loops)["parameters"]  # noqa: E731
        out += [Cell(doc, SHARED, name, unrolled_column, whole(layers(name))),
                Cell(doc, SHARED, name, "shared: stored layers (run)",
                     all_of(whole(layers(name, "shared")), whole(run))),
                Cell(doc, SHARED, name, "parameters unrolled → shared",
                     all_of(whole(params), whole(lambda n=name: params(n, "shared"))))]
    return out


def shared_bytes(name: str, steps: int) -> Callable[[], int]:
    return lambda: artifact_bytes(name, "shared", steps=steps)


def arch_row(name: str) -> list[Cell]:
    """architecture.md §5: layers, width, heads as built, and `tcompile check`'s error."""
    factor = 2 if name == "newton_logistic" else 10     # a fitted sigmoid sets its error
    row = f"`{name}`"
    return [Cell("docs/architecture.md", ARCH_PROGRAMS, row, "layers", whole(layers(name))),
            Cell("docs/architecture.md", ARCH_PROGRAMS, row, "width D", whole(width(name))),
            Cell("docs/architecture.md", ARCH_PROGRAMS, row, "heads",
                 whole(lambda: report(name)["heads_total"])),
            Cell("docs/architecture.md", ARCH_PROGRAMS, row, ARCH_PROGRAMS,
                 error_within(lambda: check_error(name), factor))]


CLAIMS: list = [
    # README: what it builds (the first three rows give formulas at the defaults)
    Cell("README.md", WHAT_IT_BUILDS, "`newton_inverse`", "layers", formula("T", layers("newton_inverse"), T=30)),
    Cell("README.md", WHAT_IT_BUILDS, "`newton_inverse`", "width D", formula("3d", width("newton_inverse"), d=4)),
    Cell("README.md", WHAT_IT_BUILDS, "`newton_inverse`", "accuracy vs interpreter",
         error_within(lambda: check_error("newton_inverse"), 10)),
    Cell("README.md", WHAT_IT_BUILDS, "`least_squares`", "layers", formula("T + 2", layers("least_squares"), T=24)),
    Cell("README.md", WHAT_IT_BUILDS, "`least_squares`", "width D", formula("4d + 2", width("least_squares"), d=4)),
    Cell("README.md", WHAT_IT_BUILDS, "`least_squares`", "accuracy vs interpreter",
         error_within(lambda: check_error("least_squares"), 10)),
    Cell("README.md", WHAT_IT_BUILDS, "`newton_logistic`", "layers",
         all_of(whole(layers("newton_logistic")),
                formula("k + 3", lambda: int(report("newton_logistic")["depth_per_iteration"]["x"]), k=6))),
    Cell("README.md", WHAT_IT_BUILDS, "`newton_logistic`", "width D",
         all_of(formula("6d + 6", width("newton_logistic"), d=5), whole(width("newton_logistic")),
                mlp_width("newton_logistic"))),
    Cell("README.md", WHAT_IT_BUILDS, "`newton_logistic`", "accuracy vs interpreter",
         error_within(lambda: check_error("newton_logistic"), 2)),
    *[c for name in ("newton_logistic_warm", "gd_least_squares", "ridge_newton_schulz",
                     "cubic_newton_schulz", "newton_schulz_sign", "newton_schulz_sqrt",
                     "gd_logistic", "ista_lasso", "jacobi", "conjugate_gradient",
                     "power_iteration", "softmax_regression", "gram_schmidt_qr", "lanczos", "sor",
                     "kaczmarz", "expm", "denman_beavers", "fista_elastic_net", "huber_irls",
                     "adam_least_squares", "poisson_newton")
      for c in library_row(name)],
    *library_row("sinkhorn", iters=3),           # the row's "3 iterations unrolled"
    *shared_rows("README.md", "unrolled layers"),
    *shared_rows("docs/architecture.md", "unrolled: layers = stored"),
    *[Cell("docs/architecture.md", SHARED, name, "artifact bytes, steps = 10 / 1000",
           all_of(whole(shared_bytes(name, 10)), whole(shared_bytes(name, 1000))))
      for name in ("newton_inverse", "least_squares")],
    Prose("README.md", r"newton_inverse: ([\d,]+) bytes at 10 steps and",
          lambda: f"{artifact_bytes('newton_inverse', 'shared', steps=10):,}"),
    Prose("README.md", r"newton_inverse: [\d,]+ bytes at 10 steps and\s+([\d,]+) at 1,000",
          lambda: f"{artifact_bytes('newton_inverse', 'shared', steps=1000):,}"),
    # (the count's digits in the params are all that grows: at most one 8-byte pad step)
    Prose("README.md", r"newton_inverse: [\d,]+ bytes at 10 steps and\s+[\d,]+ at 1,000",
          lambda: artifact_bytes("newton_inverse", "shared", steps=1000)
          - artifact_bytes("newton_inverse", "shared", steps=10) <= 8 or "grows at 1,000"),
    # README: the sparse artifact against the dense weights
    Prose("README.md", r"([\d.]+) MB for newton_inverse at d = 64, 200 steps",
          lambda: f"{artifact_bytes('newton_inverse', d=64, steps=200) / 1e6:.1f}"),
    Prose("README.md", r"whose dense weights\s+are (\d+) MB",
          lambda: f"{report('newton_inverse', d=64, steps=200)['parameters'] * 8 / 1e6:.0f}"),
    # architecture.md §5: the three programs as built
    *[c for name in ("newton_inverse", "least_squares", "newton_logistic") for c in arch_row(name)],
    Cell("docs/architecture.md", ARCH_PROGRAMS, "`newton_logistic`", "MLP hidden",
         all_of(whole(lambda: report("newton_logistic")["mlp_hidden_max"]),
                whole(lambda: report("newton_logistic")["mlp_hidden_total"]))),
]


# ---- reading markdown -----------------------------------------------------------------------

def split_row(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


@functools.lru_cache(maxsize=None)
def tables(doc: str) -> list[tuple[list[str], list[list[str]]]]:
    """Every pipe table of a markdown file: (header cells, body rows)."""
    out, lines = [], (ROOT / doc).read_text().splitlines()
    i = 0
    while i + 1 < len(lines):
        if lines[i].startswith("|") and re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", lines[i + 1].strip()):
            header, body = split_row(lines[i]), []
            i += 2
            while i < len(lines) and lines[i].startswith("|"):
                body.append(split_row(lines[i]))
                i += 1
            out.append((header, body))
        else:
            i += 1
    return out


def cell_text(claim: Cell) -> str:
    found = [(h, b) for h, b in tables(claim.doc) if claim.table in h]
    assert len(found) == 1, f"{claim.doc}: {len(found)} tables with a header cell {claim.table!r}"
    header, body = found[0]
    assert claim.column in header, f"{claim.doc}: no column {claim.column!r} in {header}"
    rows = [r for r in body if r[0].startswith(claim.row)]
    assert len(rows) == 1, f"{claim.doc}: {len(rows)} rows starting {claim.row!r}"
    return rows[0][header.index(claim.column)]


@pytest.mark.parametrize("claim", CLAIMS, ids=str)
def test_claim(claim):
    if isinstance(claim, Cell):
        claim.check(cell_text(claim))
        return
    text = (ROOT / claim.doc).read_text()
    m = re.search(claim.pattern, text)
    assert m, f"{claim.doc}: nothing matches {claim.pattern!r}"
    want = claim.measure()
    if m.groups():
        assert m.group(1) == want, f"{claim.doc} says {m.group(1)}, measured {want}"
    else:
        assert want is True, want


def test_every_program_row_is_claimed():
    """A new row in README's program table needs claims (library_row at least)."""
    (header, body), = [(h, b) for h, b in tables("README.md") if WHAT_IT_BUILDS in h]
    claimed = {c.row for c in CLAIMS if isinstance(c, Cell) and c.table == WHAT_IT_BUILDS}
    for row in body:
        assert any(row[0].startswith(r) for r in claimed), f"README row {row[0]!r} has no claim"
    shipped = {p.stem for p in PROGRAMS.glob("*.tp")}
    named = {m for row in body for m in re.findall(r"`(\w+)`", row[0])}
    assert shipped <= named, f"programs without a README row: {sorted(shipped - named)}"


def test_the_numbers_parser_reads_separators_and_exponents():
    assert numbers_in("6d + 6 (36 at d = 5; widest MLP 1,801)") == ["6", "6", "36", "5", "1,801"]
    assert numbers_in("2,368,008 → 1,121,472") == ["2,368,008", "1,121,472"]
    assert numbers_in("4.9e-15 relative (d = 4, T = 24)") == ["4.9e-15", "4", "24"]
    with pytest.raises(AssertionError):
        whole(lambda: 1801)("widest MLP 1,800")
    with pytest.raises(AssertionError):
        error_within(lambda: 5e-14, 10)("4.9e-15 relative")
    formula("4d + 2", lambda: 18, d=4)("4d + 2 (T ≥ 3)")
    with pytest.raises(AssertionError):
        formula("4d + 2", lambda: 17, d=4)("4d + 2 (T ≥ 3)")
