"""What a user reads (issue 12 §5): the model card names approximations by the user's source
lines (no compiler temporaries), explains its columns, labels its gap estimate a heuristic, and
numbers layers from 0 like the hooks; `check` prints a verdict and a short summary, not the
card. The oracles: the program's own source text, the weights (module.blocks), and the exit
codes of the documented contract."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import tcompile
from tcompile.cli.main import main
from tcompile.runtime.domain_guard import guarded

ROOT = Path(__file__).resolve().parents[1]
LOGISTIC = ROOT / "programs" / "newton_logistic.tp"
SMALL = {"d": 3, "steps": 2, "inv_steps": 2}
TEMPORARY = re.compile(r"\b(?:tmp|t)\d+\b")


@pytest.fixture(scope="module")
def logistic():
    from tcompile.compiler.pipeline import compile_file
    return compile_file(LOGISTIC, params=SMALL)


def test_card_names_each_approximation_by_its_source_line(logistic):
    card = tcompile.report_text(logistic)
    source = LOGISTIC.read_text().split("\n")
    found = re.findall(r"from line (\d+): (.*)", card)
    assert len(found) >= len(logistic.report["approximations"])
    for line, text in found:
        assert source[int(line) - 1].split("#")[0].strip() == text
    # the sigmoid pieces point at the statement calling sigmoid, the product ones at H's line,
    # the step size's reciprocal at the division (oracle: the source text itself)
    lines = {text.split("=")[0].strip() for _, text in found}
    assert {"p", "H", "eta"} <= lines
    assert not TEMPORARY.search(card), TEMPORARY.search(card)


def test_card_labels_the_gap_a_heuristic_and_explains_its_columns(logistic):
    card = tcompile.report_text(logistic)
    assert "estimated gap to the interpreter" in card and "heuristic, not a bound" in card
    for column in ("heads =", "dk =", "mlp_hidden =", "parameters =", "nonzero ="):
        assert column in " ".join(card.split())
    assert "ReLUs for each of" in card                       # what "1746 x 8" meant


def test_card_numbers_layers_from_0_like_the_hooks(logistic):
    card = tcompile.report_text(logistic)
    rows = re.findall(r"^  (\d+)(?:-(\d+))?\s+(\d+)\s+(\d+)\s+([\d,]+)\s+([\d,]+)\s+([\d,]+)",
                      card, flags=re.M)
    covered = []
    for lo, hi, heads, dk, hidden, *_ in rows:
        for L in range(int(lo), int(hi or lo) + 1):
            covered.append(L)
            block = logistic.module.blocks[L]                # the hook blocks.L is this layer
            assert int(heads) == block.attn.W_K.shape[0]
            assert int(dk) == block.attn.W_K.shape[1]
            assert int(hidden.replace(",", "")) == logistic.layers[L].mlp_hidden
    assert covered == list(range(logistic.n_layers))
    assert f"numbered 0 to {logistic.n_layers - 1}" in card


def _check(args, capsys):
    code = main(["check", str(LOGISTIC), *[f"-p{k}={v}" for k, v in SMALL.items()], *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_check_prints_a_verdict_and_a_summary_not_the_card(logistic, capsys):
    code, out, _ = _check(["--batch", "2"], capsys)
    assert code == 0
    assert out.splitlines()[0].startswith("PASS: every output within")
    assert "layer     heads" not in out and "approximated functions" not in out
    assert len(out.splitlines()) <= 12
    assert f"{logistic.n_layers} layers" in out and "heuristic" in out


def test_check_failing_says_fail_first_and_exits_3(capsys):
    code, out, _ = _check(["--batch", "2", "--rtol", "1e-300"], capsys)
    assert code == 3
    assert out.splitlines()[0].startswith("FAIL: x out of tolerance")


@pytest.mark.parametrize("args, words", [
    (["--batch", "0"], "--batch: expected a whole number >= 1, got 0"),
    (["--n", "-5"], "--n: expected a whole number >= 1, got -5"),
    (["--rtol", "nan"], "--rtol: expected a finite number > 0"),
])
def test_check_usage_errors_exit_2(args, words, capsys):
    with pytest.raises(SystemExit) as e:
        _check(args, capsys)
    assert e.value.code == 2
    assert words in capsys.readouterr().err


def test_trace_rows_count_layers_from_0(logistic):
    """(test_inspect corrupts a weight of prog.layers[L] = module.blocks[L] and finds it at
    trace layer L; here the range.)"""
    rng = np.random.default_rng(1)
    A = rng.normal(size=(8, 3))
    A /= 1.5 * np.linalg.norm(A, axis=1, keepdims=True)
    rows = tcompile.trace(logistic, A=A, y=np.sign(rng.normal(size=8)), x0=np.zeros(3))
    assert min(r["layer"] for r in rows) == 0 and max(r["layer"] for r in rows) == logistic.n_layers - 1


def test_check_domains_names_the_layer_whose_mlp_reads_the_piece(logistic):
    rng = np.random.default_rng(2)
    A = rng.normal(size=(8, 3))
    A /= 1.5 * np.linalg.norm(A, axis=1, keepdims=True)
    checks = tcompile.check_domains(logistic, A=A, y=np.sign(rng.normal(size=8)), x0=np.zeros(3))
    assert checks
    for c in checks:                         # oracle: the weights of module.blocks[layer]
        rows = list(logistic.layout.block(c["block"]).rows)
        W_1 = logistic.module.blocks[c["layer"]].mlp.W_1.numpy()
        assert np.any(W_1[:, rows] != 0), c


def test_report_dict_counts_layers_from_0(logistic):
    per_layer = logistic.report["per_layer"]
    assert [p["layer"] for p in per_layer] == list(range(logistic.n_layers))
    for p in per_layer:
        assert p["heads"] == logistic.module.blocks[p["layer"]].attn.W_K.shape[0]


def test_trace_table_names_each_variable_by_its_source_line(logistic):
    from tcompile.inspection.trace import format_trace, source_lines
    rng = np.random.default_rng(3)
    A = rng.normal(size=(8, 3))
    A /= 1.5 * np.linalg.norm(A, axis=1, keepdims=True)
    rows = tcompile.trace(logistic, A=A, y=np.sign(rng.normal(size=8)), x0=np.zeros(3))
    source = LOGISTIC.read_text().split("\n")
    text = format_trace(rows, source_lines(logistic), every=True).splitlines()
    named = 0
    for row, line in zip(rows, text[1:]):
        m = re.search(r"line (\d+)$", line)
        if row["variable"].startswith("input:"):
            assert m and source[int(m.group(1)) - 1].startswith(f"input {row['variable'][6:]} ")
        elif "@" in row["variable"]:                       # x@3: the line assigning x
            target = row["variable"].split("@")[0]
            assert m and re.match(rf"\s*{target}\s*=", source[int(m.group(1)) - 1]), line
            named += 1
    assert named > 0


def test_card_says_what_each_layer_writes_in_the_programs_words(logistic):
    card = tcompile.report_text(logistic)
    source = LOGISTIC.read_text().split("\n")
    mentions = re.findall(r"(?:part of )?(\w+) \(line (\d+)\)", card.split("approximated")[0])
    assert mentions
    for name, line in mentions:                 # "x (line 54)": line 54 assigns x
        assert re.match(rf"\s*{name}\s*=", source[int(line) - 1]), (name, line)
    # the layer writing the output's final value names it
    final = logistic.layout.output_block("x")
    L = (final.written - 1) // 2
    row = next(r for r in card.splitlines() if re.match(rf"  {L}(-\d+)?\s", r))
    assert re.search(r"\bx \(line \d+\)", row), row


def test_identical_functions_are_listed_once_with_the_lines_that_apply_them():
    """ISTA applies one exact soft-threshold per iteration: one record for all of them, its
    entries summed, pointing at the statement that applies it (issue 11: 100 identical rows)."""
    from tcompile.compiler.pipeline import compile_file
    prog = compile_file(ROOT / "programs" / "ista_lasso.tp", params={"steps": 7, "d": 3})
    (rec,) = prog.report["approximations"]
    source = (ROOT / "programs" / "ista_lasso.tp").read_text().split("\n")
    assert rec["entries"] == 7 * 3 and rec["neurons"] == rec["entries"] * rec["neurons_per_entry"]
    assert [source[n - 1].strip() for n in rec["lines"]] == [
        "x = u - clip(u, -eta * alpha, eta * alpha)"]


def test_card_groups_identical_exact_pieces_into_one_entry():
    """Conjugate gradient's projection applies 2 exact ReLUs per step (relu and -relu, one
    record each): the card lists them once with a count, and its entry count is the number of
    distinct (statement, cost) groups, not of records. Oracle: the report's records."""
    from tcompile.compiler.pipeline import compile_file
    from tcompile.inspection.report import group_approximations
    prog = compile_file(ROOT / "programs" / "conjugate_gradient.tp")
    records = prog.report["approximations"]
    exact = [a for a in records if a["exact"] and a["lines"] == [65]]
    assert len(exact) >= 10                               # 2 per step: many records ...
    card = tcompile.report_text(prog).split("approximated functions")[1]
    entries = re.findall(r"^  (\d+)\. (.*)$", card, flags=re.M)
    assert len(entries) == len(group_approximations(records)) < len(records)
    line65 = [text for _, text in entries if "relu((…))" in text]
    assert len(line65) == 1                               # ... one entry
    assert f"({len(exact)} identical exact pieces)" in line65[0]
    assert sum(int(k) for k in re.findall(r"×(\d+)", line65[0])) == len(exact)
    total = sum(a["neurons"] for a in exact)
    assert f"({total:,} in all over the {len(exact)})" in card.replace("\n       ", " ")
    # approximated records that differ in anything printed stay apart
    assert [n for n, _ in entries] == [str(i) for i in range(1, len(entries) + 1)]


def test_check_domains_summarises_all_inside_and_names_what_left(logistic):
    rng = np.random.default_rng(2)
    A = rng.normal(size=(8, 3))
    A /= 1.5 * np.linalg.norm(A, axis=1, keepdims=True)
    checks = tcompile.check_domains(logistic, A=A, y=np.sign(rng.normal(size=8)), x0=np.zeros(3))
    assert checks.all_inside and checks.outside == [] and not any(c["outside"] for c in checks)
    implied = sum(1 for c in checks if c["implied"])
    assert implied == len(checks) - len(guarded(logistic.typed_manifest.domains)) > 0
    assert str(checks) == checks.summary == (f"all {len(checks)} domain checks inside: every MLP "
                                             f"piece read inputs within the domain it was fitted on"
                                             f" ({implied} implied by the others, which run's "
                                             "guard reads instead)")
    prog = tcompile.compile_source("program t\ninput u : [n]\noutput s\ns = sigmoid(u) on [-2, 2]\n",
                                   file="t.tp")
    out = tcompile.check_domains(prog, u=np.array([[0.0, 2.5], [-3.0, 0.0]]))
    assert not out.all_inside and out.outside == [out[0]]
    lines = out.summary.splitlines()
    assert lines[0] == "1 of 1 domain checks left their domain (there the piece clamps, so its output is wrong):"
    assert lines[1] == "  sigmoid(u), reading u (input), at layer 0: saw [-3, 2.5], fitted on [-2, 2]"
    assert "no domain checks" in str(tcompile.check_domains(tcompile.compile_source(
        "program t\ninput u : [n]\noutput s\ns = 2 * u\n", file="t.tp"), u=np.ones(3)))


def test_a_shared_build_of_a_program_without_loops_says_so():
    """--loops shared on a program with no repeat: the card's loop section said only '1 layers
    run at the built counts:' and stopped."""
    prog = tcompile.compile_source("program p\ninput A : [n, 3]\noutput S\nS = A.T @ A / n\n",
                                   loops="shared")
    text = " ".join(tcompile.report_text(prog).split())
    assert "1 layer run at the built counts): none: the program has no repeat" in text
