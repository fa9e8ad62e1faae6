"""Bad input is refused with an error that names what was wrong (issue 12 §1, §4): complex and
text inputs, the run/encode options (dtype, device, inputs passed positionally), tensors that
require grad, over-long or over-nested expressions located at the expression. All in-process:
one small compiled program is shared by the module."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tcompile.errors import InputError, ProgramError
from tcompile.language.interpreter import interpret_program
from tcompile.language.parser import parse_source

PROGRAM = """program scale
dim d = 2
input A : [n, d]
input y : [n]
output w
w = A.T @ y / n
"""


@pytest.fixture(scope="module")
def prog():
    from tcompile.compiler.pipeline import compile_source
    return compile_source(PROGRAM, "scale.tp")


def inputs(n=4, seed=0):
    rng = np.random.default_rng(seed)
    return {"A": rng.normal(size=(n, 2)), "y": rng.normal(size=n)}


@pytest.mark.parametrize("bad, words", [
    (lambda a: a + 1j, "is complex (complex128)"),
    (lambda a: a + 0j, "is complex (complex128)"),                  # even a zero imaginary part
    (lambda a: a.astype(str), "strings"),
    (lambda a: a.astype(bytes), "bytes"),
    (lambda a: np.array([[1.0, "x"]] * len(a), dtype=object), "entry of type str"),
    (lambda a: torch.tensor(a, dtype=torch.complex128), "is complex (complex128)"),
])
def test_complex_and_text_inputs_are_refused_naming_the_input(prog, bad, words):
    data = inputs()
    data["A"] = bad(data["A"])
    for call in (prog.run, lambda **kw: interpret_program(prog.program, None, **kw)):
        with pytest.raises(InputError, match="input 'A'") as e:
            call(**data)
        assert words in str(e.value)


def test_real_inputs_of_other_dtypes_still_run(prog):
    data = inputs()
    want = data["A"].T @ data["y"] / 4
    for conv in (lambda a: a.astype(np.float32), lambda a: np.asarray(a, dtype=object),
                 lambda a: torch.tensor(a, requires_grad=True)):
        got = prog.run(A=conv(data["A"]), y=data["y"])["w"]
        assert np.max(np.abs(got - want)) <= 1e-6 * np.max(np.abs(want))


def test_a_tensor_that_requires_grad_is_read_not_refused(prog):
    data = inputs()
    A = torch.tensor(data["A"], requires_grad=True)
    want = data["A"].T @ data["y"] / 4
    np.testing.assert_allclose(prog.run(A=A, y=data["y"])["w"], want, rtol=1e-12)
    x = prog.encode(A=A, y=data["y"])
    assert not x.requires_grad


@pytest.mark.parametrize("kwargs, words", [
    ({"dtype": "float16"}, "dtype must be one of float64, float32, got 'float16'"),
    ({"dtype": torch.int64}, "dtype must be one of"),
    ({"device": "banana"}, "device must be 'cpu', 'cuda' or 'cuda:K', got 'banana'"),
])
def test_bad_run_options_are_input_errors(prog, kwargs, words):
    for method in (prog.run, prog.encode):
        with pytest.raises(InputError) as e:
            method(**kwargs, **inputs())
        assert words in str(e.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_an_input_error(prog):
    with pytest.raises(InputError, match="device 'cuda' is not usable here"):
        prog.run(device="cuda", **inputs())


def test_inputs_passed_positionally_say_to_pass_them_by_name(prog):
    data = inputs()
    with pytest.raises(InputError) as e:
        prog.run(data)
    assert "takes the inputs by name" in str(e.value)
    assert "array(" not in str(e.value)                     # does not print the whole dict


def test_numpy_and_torch_dtypes_are_accepted(prog):
    data = inputs()
    a = prog.run(dtype=np.float32, **data)["w"]
    b = prog.run(dtype=torch.float32, **data)["w"]
    np.testing.assert_array_equal(a, b)


def _located(source: str):
    with pytest.raises(ProgramError) as e:
        from tcompile.language.checker import check_program
        check_program(parse_source(source, "big.tp"))
    return e.value


def test_a_flat_ten_thousand_term_sum_is_too_long_at_its_expression():
    body = "x = A\nrepeat 2 {\n  x = x + A\n}\nw = " + " + ".join(["y"] * 10_000) + "\n"
    err = _located(PROGRAM.replace("w = A.T @ y / n\n", body))
    assert (err.line, err.column) == (10, 5)
    assert "too long (9999 operators" in err.message and "nested" not in err.message


def test_deep_nesting_is_located_at_its_expression_inside_a_loop():
    deep = "-" * 5000 + "y"
    body = f"x = A\nrepeat 2 {{\n  x = x + A\n  v = {deep}\n}}\nw = A.T @ y / n\n"
    err = _located(PROGRAM.replace("w = A.T @ y / n\n", body))
    assert (err.line, err.column) == (9, 7)
    assert "nested too deeply (5000 levels" in err.message
    assert "v = ---" in err.format()                           # the offending line is shown
