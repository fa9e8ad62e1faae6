"""Run the compiler's passes one by one on program text (the per-pass tests' fixture)."""
from __future__ import annotations

from tcompile.compiler.dataflow import build_dataflow
from tcompile.compiler.depth import reduce_depth
from tcompile.compiler.emit import emit
from tcompile.compiler.lower import lower
from tcompile.compiler.plan import plan_program
from tcompile.language.checker import check_program
from tcompile.language.parser import parse_source


def dataflow(src: str, params: dict | None = None):
    program = parse_source(src, "t.tp")
    return build_dataflow(program, check_program(program, params))


def atoms(src: str, params: dict | None = None, depth_pass: bool = True):
    df = dataflow(src, params)
    table = lower(df)
    return df, (reduce_depth(table, df.outputs) if depth_pass else table)


def plan(src: str, params: dict | None = None):
    df, table = atoms(src, params)
    return df, plan_program(table, df.outputs)


def emitted(src: str, params: dict | None = None):
    df, p = plan(src, params)
    return df, p, *emit(p, df.outputs)


def atom_named(table, var: str):
    """The atom holding the last assignment to `var` (its node's vars list name@k)."""
    found = [a for a in table.values() if any(v.split("@")[0] == var for v in a.node.get("vars") or [])]
    return max(found, key=lambda a: max(int(v.split("@")[1]) for v in a.node["vars"]
                                        if v.split("@")[0] == var))
