"""Matplotlib set up the same way for every picture (Agg, SVG text kept as text) and saved
the same way (PNG + SVG, each written atomically), shared by plots.py and weight_plots.py."""
from __future__ import annotations

from pathlib import Path

from ..runtime.files import atomic_open


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    matplotlib.rcParams["svg.fonttype"] = "none"     # SVG text stays text: searchable, smaller
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: Path, dpi: int = 110, tight: bool = True) -> list[Path]:
    path.parent.mkdir(parents=True, exist_ok=True)
    out = []
    for ext in (".png", ".svg"):
        p = path.with_suffix(ext)
        with atomic_open(p) as f:            # an interrupted plot leaves the old file or none
            fig.savefig(f, format=ext[1:], dpi=dpi, bbox_inches="tight" if tight else None)
        out.append(p)
    _plt().close(fig)
    return out


__all__ = ["_plt", "_save"]
