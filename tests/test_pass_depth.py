"""The depth pass (compiler/depth.py): a consumer reads a stored value's definition where
that moves it a layer up, and only then."""
from __future__ import annotations

from pathlib import Path

import numpy as np

import tcompile
from passes import atoms
from tcompile.compiler.depth import ready_layers
from tcompile.compiler.plan import plan_program
from tcompile.compiler.poly import Mono
from tcompile.inspection.sampling import sample_inputs
from tcompile.language.parser import parse_source

# V is stored (W needs it as one factor); L = Gᵀ V can read Gᵀ X G instead: three factors
STORED_THEN_READ = """program t
dim d = 3
input X : [d, d] assume norm <= 1
input G : [d, d] assume norm <= 1
output W, L
V = X @ G
W = V @ V @ V
L = G.T @ V
"""


def test_reading_the_definition_moves_the_consumer_up_a_layer():
    df, before = atoms(STORED_THEN_READ, depth_pass=False)
    df, after = atoms(STORED_THEN_READ)
    X, G, L = df.inputs["X"], df.inputs["G"], df.outputs["L"]
    V = next(m.chain[1][0] for m in before[L].poly)
    assert before[L].poly == {Mono(((G, True), (V, False))): 1.0}
    assert after[L].poly == {Mono(((G, True), (X, False), (G, False))): 1.0}
    assert ready_layers(before)[L] == 2 and ready_layers(after)[L] == 1


def test_a_rewrite_past_three_factors_is_not_taken():
    src = STORED_THEN_READ.replace("V = X @ G", "V = X @ X @ G")    # Gᵀ X X G: four factors
    df, before = atoms(src, depth_pass=False)
    df, after = atoms(src)
    L = df.outputs["L"]
    assert after[L].poly == before[L].poly
    assert ready_layers(after)[L] == 2


def test_the_rewritten_program_computes_the_same_values():
    prog = tcompile.compile_source(STORED_THEN_READ, "t.tp")
    inputs = sample_inputs(parse_source(STORED_THEN_READ, "t.tp"), n=4, batch=3, seed=1)
    got = prog.run(**inputs)
    X, G = inputs["X"], inputs["G"]
    V = X @ G
    np.testing.assert_allclose(got["L"], np.swapaxes(G, 1, 2) @ V, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(got["W"], V @ V @ V, rtol=1e-13, atol=1e-14)
    assert prog.n_layers == 2                # W needs V stored first; L rides in layer 1


def test_damped_newton_is_two_layers_shorter_per_run_with_the_depth_pass():
    src = (Path(__file__).resolve().parents[1] / "programs" / "newton_logistic.tp").read_text()
    params = {"steps": 2, "inv_steps": 2, "d": 3}
    depths = []
    for depth_pass in (False, True):
        df, table = atoms(src, params, depth_pass=depth_pass)
        depths.append(plan_program(table, df.outputs).n_layers)
    assert depths == [13, 11]
