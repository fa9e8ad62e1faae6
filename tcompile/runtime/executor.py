"""The structured executor: the compiled model's numbers, reorganised to do the algorithm's work.

The paper-form module (model.py) multiplies the whole (B, n, D) stream by every head's D×D
W_V and runs every MLP over every row and token: exact, and mostly zeros. This executor is
derived from the same LayerWeights and the Layout (exec_plan.py, exec_sublayers.py):

* every stored value is its own contiguous (B, rows, tokens) tensor, over the token columns
  it occupies only ([n]-shaped values span n tokens, [d, d], [d] and scalars d or 1);
* a head reads only the rows its W_K, W_Q, W_V read and writes only W_V's nonzero rows; its
  products run over the operands' extents, in the cheaper order (V Kᵀ) Q or V (Kᵀ Q);
* heads whose K and V are encoder constants are one matrix (or scalar) applied to Q;
* empty sublayers and heads or units that write nothing are skipped;
* an MLP reads only its input rows; univariate PL pieces are tables (pl_tables.py).

It computes the same function as the module (tests/test_executor.py: ≤ 1e-13 relative in
float64); the module stays the reference for hooks, run_with_cache, trace and fine-tuning.
Per (n, dtype, device) the plan is resolved once into tensors (exec_ops.py) and kept.
"""
from __future__ import annotations

import functools

import numpy as np
import torch

from ..errors import InputError
from .codec import ValidatedInputs, constant_storage, in_shape, storage_at_input
from .exec_ops import HeadOp, MlpOp, ReadOp, fit
from .exec_plan import concrete, initial_occupancy
from .exec_sublayers import HeadSpec, SublayerPlan, plan_program
from .layout import Layout
from .model import exact_float32
from .weights import LayerWeights


class _Sublayer:
    """One sublayer resolved: contributions, then each written slot = residual + terms.

    Two exact simplifications of the residual sum: a linear head term that writes −(old
    value) onto every row of a slot that held something (the compiler's clearing of rows it
    reuses) is dropped together with the old value (x + (−x) = 0); and a linear head then
    computes only the rows some term still adds."""

    def __init__(self, plan: SublayerPlan, slots: dict, consts: dict, n, dtype, device):
        make = lambda c: (HeadOp if isinstance(c, HeadSpec) else MlpOp)(  # noqa: E731
            c, slots, consts, n, dtype, device)
        ops = [make(c) for c in plan.contribs]
        writes = []
        for slot, old, terms in zip(plan.slots, plan.olds, plan.terms):
            ts = [(tm.index, tm.src, tm.dst) for tm in terms]
            held = {i for i, r in enumerate(old.rows) if old.owner_of(i) is not None}
            cleared = [tm for tm in ts if _clears(ops[tm[0]], tm, slot.rows)]
            if held and held <= {d for tm in cleared for d in tm[2]}:
                old, ts = None, [tm for tm in ts if tm not in cleared]
            e = concrete(slot.ext, n)
            writes.append((slot, None if old is None or old.zero else ReadOp(old, slots, e, n), ts))
        ops, writes = _prune_linear(ops, writes)
        self.ops = ops
        self.writes = []
        for slot, old_op, ts in writes:
            resolved = []
            for i, src, dst in ts:
                M = ops[i].linear_map()         # rows pruned: fewer than the contribution's
                width = len(M) if M is not None else len(plan.contribs[i].out_rows)
                resolved.append((i, None if src == tuple(range(width)) else list(src),
                                 concrete(plan.contribs[i].ext, n),
                                 None if dst == tuple(range(len(slot.rows)))
                                 else torch.tensor(dst, device=device), ops[i].alpha))
            self.writes.append((slot.key, len(slot.rows), concrete(slot.ext, n), old_op, resolved))

    def __call__(self, state: dict, like: torch.Tensor) -> None:
        outs = [None if op is None else op(state, like) for op in self.ops]
        new = {}
        for key, rows, e, old_op, terms in self.writes:
            acc = None if old_op is None else old_op(state, like)
            for i, src, have, dst, alpha in terms:
                part = outs[i] if src is None else outs[i][:, src]
                part = fit(part, have, e)
                if dst is None:
                    if acc is None:
                        acc = part * alpha if alpha != 1.0 else part
                    else:
                        acc = acc.add(part, alpha=alpha) if alpha != 1.0 else acc + part
                else:
                    if acc is None:
                        acc = like.new_zeros((part.shape[0], rows, e))
                    B = max(acc.shape[0], part.shape[0])
                    acc = acc.expand(B, -1, -1).index_add(1, dst, part.expand(B, -1, -1),
                                                          alpha=alpha)
            new[key] = acc if acc is not None else like.new_zeros((1, rows, e))
        state.update(new)


def _clears(op, term, slot_rows) -> bool:
    """Does this term add exactly −(old value) of each slot row it writes?"""
    M = op.linear_map()
    if M is None:
        return False
    q = {r: j for j, r in enumerate(op.q_rows)}
    for s, d in zip(term[1], term[2]):
        r = slot_rows[d]
        if r not in q:
            return False
        want = np.zeros(M.shape[1])
        want[q[r]] = -1.0
        if not np.array_equal(M[s], want):
            return False
    return True


def _prune_linear(ops, writes):
    """Linear heads compute only the rows a term adds; ops no term uses are dropped (None)."""
    used = [set() for _ in ops]
    for _, _, ts in writes:
        for i, src, _ in ts:
            used[i] |= set(src)
    remap = [None] * len(ops)
    for i, op in enumerate(ops):
        if not used[i]:
            ops[i] = None
            continue
        M = op.linear_map()
        if M is not None and len(used[i]) < len(M):
            keep = sorted(used[i])
            op.set_linear(M[keep])
            remap[i] = {s: k for k, s in enumerate(keep)}
    writes = [(slot, old, [(i, tuple(remap[i][s] for s in src) if remap[i] else src, dst)
                           for i, src, dst in ts]) for slot, old, ts in writes]
    return ops, writes


class _Resolved:
    """The plan for one (n, dtype, device): constant slots and resolved sublayers."""

    def __init__(self, ex: "StructuredExecutor", n: int, dtype, device):
        self.n = n
        self.like = torch.zeros((), dtype=dtype, device=device)
        slots = dict(ex.all_slots)
        self.consts = {}
        for s in ex.initial.slots.values():
            if s.const is not None:
                st = constant_storage(ex.layout.block(s.key), n)
                self.consts[s.key] = torch.as_tensor(
                    np.ascontiguousarray(st), dtype=dtype, device=device)[None]
        self.sublayers = [_Sublayer(p, slots, self.consts, n, dtype, device) for p in ex.plans]


class StructuredExecutor:
    """Runs a compiled program from its LayerWeights and Layout (see the module docstring)."""

    def __init__(self, layers: list[LayerWeights], layout: Layout):
        self.layout = layout
        occ = initial_occupancy(layout)
        self.initial = occ.copy()
        self.plans = plan_program(layout, layers, occ)
        self.all_slots = dict(self.initial.slots)
        for p in self.plans:
            self.all_slots.update({s.key: s for s in p.slots})
        self.inputs = [s for s in self.initial.slots.values() if s.const is None]
        self._drop = self._lifetimes()
        self._resolved: dict = {}

    def _lifetimes(self) -> list[list[str]]:
        """Slot keys no later sublayer reads (and no output needs), dropped after each one."""
        last = {}
        for i, p in enumerate(self.plans):
            reads = [r for c in p.contribs for r in _reads(c)] + list(p.olds)
            for r in reads:
                for seg in r.segments:
                    if seg.key is not None:
                        last[seg.key] = i
        keep = {o.block for o in self.layout.outputs}
        drop = [[] for _ in self.plans]
        for key, i in last.items():
            if key not in keep and self.all_slots[key].const is None:
                drop[i].append(key)
        return drop

    def resolved(self, n: int, dtype=torch.float64, device="cpu") -> _Resolved:
        key = (n, dtype, str(device))
        if key not in self._resolved:
            self._resolved[key] = _Resolved(self, n, dtype, device)
        return self._resolved[key]

    # ---- entry points ------------------------------------------------------------------
    def input_state(self, inputs: ValidatedInputs, dtype=torch.float64, device="cpu") -> dict:
        """The input slots' tensors, straight from prepared inputs (no (B, n, D) embedding)."""
        state = {}
        for s in self.inputs:
            st = storage_at_input(self.layout.block(s.key), inputs)
            state[s.key] = torch.as_tensor(np.ascontiguousarray(st), dtype=dtype, device=device)
        return state

    def run_inputs(self, inputs: ValidatedInputs, dtype=torch.float64, device="cpu") -> dict:
        """Prepared inputs → outputs (tensors, batch axis first, the program's shapes)."""
        return self.run_state(self.input_state(inputs, dtype, device), inputs.n, dtype, device)

    def forward(self, x: torch.Tensor) -> dict:
        """The encoded embedding x (B, n, D) → outputs, like decode(module(x)) but tensors."""
        return self.run_state(self.state_from_embedding(x), x.shape[1], x.dtype, x.device)

    def state_from_embedding(self, x: torch.Tensor) -> dict:
        n = x.shape[1]
        return {s.key: x[:, :concrete(s.ext, n), list(s.rows)].transpose(1, 2)
                for s in self.inputs}

    def run_state(self, state: dict, n: int, dtype, device) -> dict:
        res = self.resolved(n, dtype, device)
        with torch.no_grad(), exact_float32():
            return self.body(res, state)

    def body(self, res: _Resolved, state: dict) -> dict:
        """The sublayers on a state of input slots; what `executor="compiled"` captures."""
        state = dict(state)
        B = _batch(state)
        state.update(res.consts)
        for sub, drop in zip(res.sublayers, self._drop):
            sub(state, res.like)
            for key in drop:
                state.pop(key, None)
        return self._decode(state, B, res.n)

    def _decode(self, state: dict, B: int, n: int) -> dict:
        out = {}
        for spec in self.layout.outputs:
            blk = self.layout.block(spec.block)
            S = state[spec.block]
            S = fit(S, S.shape[-1], blk.storage_cols(n)).expand(B, -1, -1)
            out[spec.name] = in_shape(S.mT if blk.transposed else S, spec.shape)
        return out


class CompiledExecutor:
    """torch.compile of StructuredExecutor.body, one graph per (n, batch, dtype, device),
    shapes static. Whether it pays is in bench/README.md (on CPU it does not)."""

    def __init__(self, base: StructuredExecutor):
        self.base = base
        self._fns: dict = {}

    def run_inputs(self, inputs: ValidatedInputs, dtype=torch.float64, device="cpu") -> dict:
        return self.run_state(self.base.input_state(inputs, dtype, device), inputs.n, dtype, device)

    def forward(self, x: torch.Tensor) -> dict:
        return self.run_state(self.base.state_from_embedding(x), x.shape[1], x.dtype, x.device)

    def run_state(self, state: dict, n: int, dtype, device) -> dict:
        key = (n, _batch(state), dtype, str(device))
        if key not in self._fns:
            # every graph is a recompile of the one code object StructuredExecutor.body:
            # past dynamo's limit (8) it would silently run eager, so raise it (process-wide)
            import torch._dynamo.config as dynamo_config
            dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, 256)
            res = self.base.resolved(n, dtype, device)
            self._fns[key] = torch.compile(functools.partial(self.base.body, res), dynamic=False)
        with torch.no_grad(), exact_float32():
            return self._fns[key](state)


EXECUTORS = ("structured", "compiled", "module")


def executor_for(prog, kind: str):
    """The program's structured (or compiled) executor, built on first use and kept."""
    if kind not in EXECUTORS:
        raise InputError(f"executor must be one of {', '.join(EXECUTORS)}, got {kind!r}")
    if kind == "module":
        raise ValueError("executor 'module' is the nn.Module: use prog.module_for(dtype, device)")
    cache = prog._executors
    if "structured" not in cache:
        cache["structured"] = StructuredExecutor(prog.layers, prog.layout)
    if kind == "compiled" and kind not in cache:
        cache["compiled"] = CompiledExecutor(cache["structured"])
    return cache[kind]


def _batch(state: dict) -> int:
    """The batch size of a state of input slots (1 for a program without inputs)."""
    return next(iter(state.values())).shape[0] if state else 1


def _reads(c):
    if isinstance(c, HeadSpec):
        return [c.k, c.q, c.v]
    return [c.var, c.gate]


__all__ = ["StructuredExecutor", "CompiledExecutor", "EXECUTORS", "executor_for"]
