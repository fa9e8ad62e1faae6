"""examples/train_from_compiled.py under torchrun: 2 processes (DDP, gloo on CPU) train to the
single-process result (same seed, same global batch): the final test MSE agrees to 3
significant digits, and so does the logged training loss (the global batch's, all-reduced).

The oracle is the same example run in one process (here, in-process). Tiny sizes: the cost is
starting two Python processes."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "train_from_compiled.py"
CONFIG = dict(steps=6, n_train=48, n_test=24, batch=16, eval_every=3, models=("compiled",))


def _load_example():
    spec = importlib.util.spec_from_file_location("train_from_compiled_ddp", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sig3(x: float) -> str:
    return f"{x:.2e}"


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch without distributed")
def test_two_processes_match_one(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(EXAMPLE), "--steps", "6", "--n-train", "48", "--n-test", "24", "--batch", "16",
           "--eval-every", "3", "--models", "compiled", "--no-plot", "--out", str(tmp_path)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ex = _load_example()                            # one process, meanwhile
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = ex.run(**CONFIG)
    finally:
        torch.set_num_threads(saved)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert "on 2 processes" in out and "[compiled] step    6/6" in out and "total" in out
    double = json.loads((tmp_path / "train_from_compiled.json").read_text())
    assert double["config"]["processes"] == 2 and single["config"]["processes"] == 1
    a, b = single["history"]["compiled"], double["history"]["compiled"]
    assert [r["step"] for r in a] == [r["step"] for r in b] == [0, 3, 6]
    for ra, rb in zip(a, b):
        assert sig3(ra["mse_oracle"]) == sig3(rb["mse_oracle"])
        assert sig3(ra["mse_target"]) == sig3(rb["mse_target"])
        if ra["train_loss"] is not None:
            assert sig3(ra["train_loss"]) == sig3(rb["train_loss"])
    assert a[-1]["mse_oracle"] != a[0]["mse_oracle"]          # it trained


def test_a_batch_that_does_not_divide_is_refused():
    ex = _load_example()
    dist = ex.Dist.single()
    dist.world, dist.rank = 3, 1
    with pytest.raises(SystemExit, match="does not divide"):
        dist.share(list(range(16)))
    assert list(dist.share(list(range(6)))) == [2, 3]
