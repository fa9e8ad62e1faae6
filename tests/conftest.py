"""Shared test setup.

Plain `pytest` (unlike `python -m pytest`) does not put the repository root on sys.path; an
editable install made before tcompile/__init__.py existed then resolves `tcompile` to an empty
namespace package. Putting the root first makes every way of running the tests see the real one.
"""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


# The longest single tests, started first: with `-n 2 --dist worksteal` each worker takes half
# of the collection in order and steals from the other's queue end, so a long test late in
# the order can leave one worker running it alone at the end (test_train_ddp's two processes
# ended a measured run 7.5 s after the other worker had finished). None of these uses a
# module- or session-scoped fixture, so moving them costs no set-up twice.
RUN_FIRST = (
    "tests/test_build_identity.py::test_builds_do_not_depend_on_the_cpu_or_blas_kernel",
    "tests/test_shared_loops.py::test_two_power_iterations_in_sequence_both_read_ahead_in_kernels",
    "tests/test_mlp_pieces.py::test_a_loop_of_sin_and_cos_follows_numpy_unrolled_and_shared",
    "tests/test_train_ddp.py::test_two_processes_match_one",
)


def pytest_collection_modifyitems(config, items):
    first = {nodeid: i for i, nodeid in enumerate(RUN_FIRST)}
    items.sort(key=lambda item: first.get(item.nodeid, len(first)))
