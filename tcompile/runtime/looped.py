"""A shared build as a torch module: each stored layer once, loops run as loops.

The layers are model.py's `Block`s (the paper's attention + MLP, unchanged); what is new is
only the control around them. For a program with one top-level loop:

    LoopedTransformer
      prologue   ModuleList of Blocks                 (layers before the loop)
      body       LoopBlock: its Blocks, run count − offset times
      epilogue   ModuleList of Blocks                 (layers after it)

A loop body that holds a loop nests the same way (`pre`, `loop`, `post` inside the LoopBlock);
several loops side by side are `body0`, `body1`, with `middle0`, ... between them. Weights are
shared across iterations, so gradients from every application add up in one parameter — the
weight-tied looped transformer of Giannou et al. 2023 / Yang et al. 2024.

Hook names carry the iteration: `prologue.0.hook_resid_post`, `body.{iter}.{layer}.hook_...`,
`body.{iter}.loop.{iter2}.{layer}.hook_...` (run_with_cache), from 0 like everything else.
"""
from __future__ import annotations

import torch
from torch import nn

from .loops import LoopItem, LoopProgram, parts as _parts
from .model import Block, HookPoint, blocks_from_arrays, exact_float32


class _Sequence(nn.Module):
    """Named parts run in order: each a ModuleList of Blocks, a LoopBlock, or a nested
    _Sequence (a chunk holding instances of deeper loops). A sequence of layers only keeps
    them as `layers`, and its hook names number them directly (body.{iter}.{layer})."""

    def __init__(self, seq, blocks: list[Block], outer: bool, depth_of: dict[str, int]):
        super().__init__()
        self.order: list[str] = []
        for name, part in _parts(seq, outer, depth_of):
            if isinstance(part, LoopItem):
                module = LoopBlock(part, blocks, depth_of)
            elif any(isinstance(i, LoopItem) for i in part):
                module = _Sequence(part, blocks, False, depth_of)
            else:
                module = nn.ModuleList([blocks[i] for i in part])
            self.order.append(name)
            self.add_module(name, module)

    def run(self, x, counts, ctx, path):
        for name in self.order:
            part = getattr(self, name)
            where = path if name == "layers" else path + (name,)
            if isinstance(part, nn.ModuleList):
                for j, block in enumerate(part):
                    ctx.at(where + (j,))
                    x = block(x)
            else:
                x = part.run(x, counts, ctx, where)
        return x


class LoopBlock(_Sequence):
    """One loop: its body's parts (`layers`, or `pre`, `loop`, `post` around an inner loop),
    run `count − offset` times — a kernel of `every` iterations: (count − offsets[r]) / every
    times, then `tail{r}`, for r = (count − offset) mod every (loops.py `LoopItem`)."""

    def __init__(self, item: LoopItem, blocks: list[Block], depth_of: dict[str, int]):
        super().__init__(item.body, blocks, False, depth_of)
        self.key, self.offset, self.every = item.loop, item.offset, item.every
        self.item = item
        for r, tail in enumerate(item.tails):
            self.add_module(f"tail{r}", _Sequence(tail, blocks, False, depth_of))

    def run(self, x, counts, ctx, path):
        apps, _ = self.item.runs(counts[self.key])
        x = self._applications(x, apps, counts, ctx, path)
        if self.item.tails:
            r = self.item.residue(counts[self.key])
            x = getattr(self, f"tail{r}").run(x, counts, ctx, path + (f"tail{r}",))
        return x

    def _applications(self, x, apps, counts, ctx, path):
        for it in range(apps):
            x = ctx.after_iteration(self, x, self.apply(x, counts, ctx, path + (it,)), it)
            if ctx.stop:
                ctx.stop = False        # halting stops this loop only: the ones after it run
                break
        return x

    def apply(self, x, counts, ctx, path):
        """One application of the body."""
        return _Sequence.run(self, x, counts, ctx, path)


class _Context:
    """What a forward pass tracks besides x: where it is (for hook names) and halting."""

    def __init__(self, halt=None):
        self.where: tuple = ()
        self.layers = 0             # layers run so far
        self.halt = halt
        self.stop = False           # set by halt: every problem of the batch has halted

    def at(self, where: tuple) -> None:
        self.where = where
        self.layers += 1

    def after_iteration(self, loop: LoopBlock, before, after, it: int):
        return after if self.halt is None else self.halt(self, loop, before, after, it)


class LoopedTransformer(_Sequence):
    """The shared build's model: `forward(x, steps=50)` runs the loops that many times (any
    run-time count param of the program by name; the built counts by default)."""

    def __init__(self, blocks: list[Block], width: int, loops: LoopProgram):
        super().__init__(loops.sequence, blocks, True,            # prologue, body, epilogue
                         {spec.key: spec.depth for spec in loops.loops})
        self.width = width
        self.loops = loops
        self.stored = tuple(blocks)     # stored layer i (prog.layers[i]) as a Block; a tuple,
        self._ctx = _Context()          # so not registered twice

    @classmethod
    def from_arrays(cls, arrays: list, width: int, loops: LoopProgram, dtype=torch.float64,
                    device="cpu"):
        model = cls(blocks_from_arrays(arrays, dtype, device), width, loops)
        model.requires_grad_(False)
        return model

    def forward(self, x: torch.Tensor, counts: dict | None = None, halt=None, **params) -> torch.Tensor:
        """x (batch, n, D) → the final residual. `counts`/`params`: run-time counts by param
        name (`steps=50`). `halt(ctx, loop, x_before, x_after, iteration)` (halting.py)
        decides the state after each iteration of a loop (and may set ctx.stop)."""
        resolved = self.loops.counts({**(counts or {}), **params})
        self._ctx = _Context(halt)
        try:
            with exact_float32():
                return self.run(x, resolved, self._ctx, ())
        finally:
            self._ctx = _Context()

    def n_layers(self, counts: dict | None = None, **params) -> int:
        """Layers a forward pass runs at these counts."""
        return self.loops.n_layers(self.loops.counts({**(counts or {}), **params}))

    def hook_points(self) -> dict[str, HookPoint]:
        return {name: m for name, m in self.named_modules() if isinstance(m, HookPoint)}

    def hook_name(self, module_name: str) -> str:
        """The run-time name of a hook point: where the pass is now (iterations included),
        then the hook's place in its Block (hook_resid_pre, attn.hook_result, ...)."""
        parts = module_name.split(".")
        tail = parts[-2:] if parts[-2] in ("attn", "mlp") else parts[-1:]
        return ".".join([str(p) for p in self._ctx.where] + tail)

    def run_with_cache(self, x: torch.Tensor, names=None, **params) -> tuple[torch.Tensor, dict]:
        """(output, {hook name with iterations: activation}); `names` filters (a set, or a
        predicate on the name)."""
        cache: dict[str, torch.Tensor] = {}
        keep = (lambda n: True) if names is None else (names if callable(names) else names.__contains__)

        def record(module_name):
            def hook(_m, _i, out):
                name = self.hook_name(module_name)
                if keep(name):
                    cache[name] = out.detach()
            return hook

        handles = [hp.register_forward_hook(record(name)) for name, hp in self.hook_points().items()]
        try:
            with torch.no_grad():
                out = self(x, **params)
        finally:
            for h in handles:
                h.remove()
        return out, cache


__all__ = ["LoopedTransformer", "LoopBlock"]
