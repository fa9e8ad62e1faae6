"""The package's structure: the runtime stands alone, and no two modules import each other.

- Loading, running and saving an artifact imports no compiler module, not the interpreter,
  no inspection module and not numpy.ma (checked in a fresh interpreter process, so nothing an earlier test
  imported can hide an import).
- No module of tcompile/runtime reaches the compiler or inspection through any import, lazy
  ones included: inspection imports the runtime, never the reverse.
- The module import graph, read from the source with `ast` (imports inside functions count),
  has no cycles; nothing imports through importlib, which this check could not see.
- The typed manifest survives its JSON form unchanged.
"""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tcompile
from tcompile.inspection.tolerance import ROUNDING_FACTOR, Tolerances
from tcompile.runtime.artifact import manifest_from_json, manifest_to_json

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "tcompile"
LEAST_SQUARES = ROOT / "programs" / "least_squares.tp"


# ---- the import graph, from the source -----------------------------------------------------

def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(importer: str, node: ast.ImportFrom) -> str:
    """The absolute module a `from X import ...` names (relative levels resolved)."""
    if not node.level:
        return node.module or ""
    is_package = MODULES[importer].name == "__init__.py"
    base = importer.split(".")
    base = base[:len(base) - node.level + (1 if is_package else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(name: str) -> set[str]:
    """Every tcompile module `name` imports, anywhere in its body (functions included)."""
    out = set()
    for node in ast.walk(ast.parse(MODULES[name].read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(name, node)
            # `from pkg import mod` imports the module pkg.mod; `from mod import name`, mod
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base
                       for a in node.names]
        else:
            continue
        out |= {t for t in targets if t in MODULES and t != name}
    return out


GRAPH = {name: imports_of(name) for name in MODULES}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of the directed graph as a list of nodes (first = last), or None."""
    state: dict[str, int] = {}          # 1: on the current path, 2: done
    path: list[str] = []

    def visit(u):
        state[u] = 1
        path.append(u)
        for v in sorted(graph[u]):
            if state.get(v) == 1:
                return path[path.index(v):] + [v]
            if v not in state:
                found = visit(v)
                if found:
                    return found
        path.pop()
        state[u] = 2
        return None

    for u in sorted(graph):
        if u not in state:
            found = visit(u)
            if found:
                return found
    return None


def reachable(graph: dict[str, set[str]], start: set[str]) -> set[str]:
    seen, todo = set(), list(start)
    while todo:
        u = todo.pop()
        if u not in seen:
            seen.add(u)
            todo += graph[u]
    return seen


def test_the_graph_reader_sees_imports_inside_functions():
    assert "tcompile.runtime.program" in GRAPH["tcompile.cli.commands"]
    assert "tcompile.compiler.pipeline" in GRAPH["tcompile.cli.commands"]      # inside cmd_build
    assert "tcompile.compiler.pipeline" in GRAPH["tcompile"]                    # inside __getattr__
    assert "tcompile.language.ast" in GRAPH["tcompile.language.checker"]       # from . import ast
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_module_graph_has_no_cycles():
    assert find_cycle(GRAPH) is None, " -> ".join(find_cycle(GRAPH))


def test_no_dynamic_imports():
    """importlib.import_module / __import__ would hide edges from the graph above."""
    for name, path in MODULES.items():
        text = path.read_text()
        assert "import_module" not in text and "__import__" not in text, name


def test_runtime_reaches_no_compiler_module():
    runtime = {m for m in MODULES if m.startswith("tcompile.runtime")}
    reached = reachable(GRAPH, runtime)
    assert not {m for m in reached if m.startswith("tcompile.compiler")}, sorted(reached)


def test_runtime_reaches_no_inspection_module():
    """The layering is runtime ← inspection: the tools that read a program take it as an
    argument, and nothing in the runtime reaches them through any import (lazy ones included)."""
    runtime = {m for m in MODULES if m.startswith("tcompile.runtime")}
    reached = reachable(GRAPH, runtime)
    assert not {m for m in reached if m.startswith("tcompile.inspection")}, sorted(reached)
    assert "tcompile.runtime.program" in GRAPH["tcompile.inspection.domains"]     # the reverse is fine
    for m in runtime:
        assert "tcompile.language.interpreter" not in GRAPH[m], m


# ---- the same, at run time -----------------------------------------------------------------

RUNTIME_ONLY = """
import sys
import numpy as np
import tcompile
tcompile.load
import tcompile.runtime.program, tcompile.runtime.artifact, tcompile.runtime.model

def leaked(inspection=True):
    return sorted(m for m in sys.modules if m.startswith("tcompile.compiler")
                  or m == "tcompile.language.interpreter"
                  or inspection and m.startswith("tcompile.inspection"))

assert not leaked(), leaked()
prog = tcompile.load(sys.argv[1])
inputs = dict(np.load(sys.argv[2]))
out = prog.run(**inputs)
assert prog.report["layers"] == prog.n_layers
prog.save(sys.argv[1] + "_again")
assert not leaked(), leaked()              # loading, running, saving: the runtime alone
# planning's set routines (exec_plan.common, sorted_distinct) leave numpy.ma unimported:
# 1.2 MiB resident a run would otherwise carry
assert "numpy.ma" not in sys.modules
report = tcompile.report_text(prog)
assert set(out) == {"w", "y_hat"}, out
assert not leaked(inspection=False), leaked(inspection=False)
np.savez(sys.argv[3], **out)
print("ok")
"""


def test_loading_and_running_an_artifact_imports_no_compiler(tmp_path):
    prog = tcompile.compile_file(LEAST_SQUARES, params={"steps": 3})
    base = tmp_path / "ls"
    prog.save(base)
    rng = np.random.default_rng(0)
    A = rng.standard_normal((6, 4))
    inputs = {"A": A / np.linalg.norm(A, axis=1, keepdims=True), "y": rng.standard_normal(6),
              "a_test": rng.standard_normal(4)}
    np.savez(tmp_path / "in.npz", **inputs)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-c", RUNTIME_ONLY, str(base), str(tmp_path / "in.npz"),
                        str(tmp_path / "out.npz")], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
    got = dict(np.load(tmp_path / "out.npz"))
    want = prog.run(**inputs)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])


BUILD_ONLY = """
import sys
import tcompile
prog = tcompile.compile_file(sys.argv[1], params={"steps": 3})
prog.save(sys.argv[2])
print(tcompile.report_text(prog)[:0] + "ok" if "torch" not in sys.modules else "torch imported")
"""


def test_building_and_saving_never_imports_torch(tmp_path):
    """A build needs no torch (its import is most of a CLI build's time): only running does."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-c", BUILD_ONLY, str(LEAST_SQUARES), str(tmp_path / "ls")],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", (r.stdout, r.stderr)
    assert tcompile.load(tmp_path / "ls").n_layers == 5


# ---- the typed manifest and its JSON -------------------------------------------------------

@pytest.fixture(scope="module")
def logistic():
    return tcompile.compile_file(ROOT / "programs" / "newton_logistic.tp",
                                 params={"d": 3, "steps": 1, "inv_steps": 2})


def test_manifest_survives_json(logistic):
    m = logistic.typed_manifest
    assert m.approximations and m.domains, "pick a program with pieces"
    text = json.dumps(manifest_to_json(m))
    back = manifest_from_json(json.loads(text))
    assert back == m
    assert back.layout.row_map == m.layout.row_map
    assert logistic.manifest == manifest_to_json(m)


def test_layout_lookups(logistic):
    lay = logistic.layout
    for spec in lay.outputs:
        assert lay.output_block(spec.name).key == spec.block
    assert all(b.written == 0 for b in lay.input_blocks())
    # every row use in the row map is a row of the block it names
    for r, uses in enumerate(lay.row_map):
        assert all(r in lay.block(u.block).rows for u in uses)
    # occupants after the encoder name only encoder-written blocks
    labels = {b.label for b in lay.input_blocks()}
    assert {o.rsplit("[", 1)[0] for o in lay.occupants(0) if o} <= labels


def test_tolerance_policy():
    policy = Tolerances(predicted=1e-10, sensitivity={"x@0": 1e-14, "x@1": 1e-11, "y@0": 1e-9})
    assert policy.for_variable("x@0") == 1e-10                       # the prediction wins
    assert policy.for_variable("x@1") == ROUNDING_FACTOR * 1e-11     # rounding wins
    assert policy.for_variable("input:A") == 1e-10                   # not an assignment
    assert policy.for_outputs(["x"]) == ROUNDING_FACTOR * 1e-11      # loosest over x@k
    assert policy.for_outputs(["x", "y"]) == ROUNDING_FACTOR * 1e-9
    assert policy.for_outputs(["z"]) == 1e-10


def test_a_moved_method_says_where_it_went():
    """The inspection tools left CompiledProgram (the runtime imports none of them): asking a
    program for one of the old methods names the function to call, and that function exists."""
    import tcompile.inspection.labels  # noqa: F401  (MOVED names a function of this module)
    from tcompile.runtime.program import MOVED
    prog = tcompile.compile_source("program t\ninput u : [n]\noutput s\ns = 2 * u\n", file="t.tp")
    for name, call in MOVED.items():
        with pytest.raises(AttributeError, match=f"CompiledProgram.{name} moved: call "):
            getattr(prog, name)
        target = tcompile
        for part in call.split("(")[0].split(".")[1:]:          # tcompile.a.b(...) → a, b
            target = getattr(target, part)
        assert callable(target), call
    with pytest.raises(AttributeError, match="has no attribute 'no_such_thing'"):
        prog.no_such_thing
