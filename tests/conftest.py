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
