"""Straight-line code for the structured executor: one generated Python function per plan and
input shape, so that a forward pass is the list of tensor calls and nothing else.

The resolved plan (executor.py, exec_ops.py) is a tree of small callables: reads that pick
slots, heads that walk their bracketed product, residual sums that decide per term whether to
add in place. At batch 1 that Python costs more than the arithmetic. Its decisions depend on
the shapes only (n, the batch size, the dtype and device), never on values, so one run records
the tensor calls it makes (a TorchFunctionMode sees every torch function and Tensor method)
and `trace` writes them out as the body of a Python function:

    def forward(s0, s1):
        v0 = f0(s0, c0)          # torch.bmm(state['input:A'], <a weight>)
        v1 = f1(v0, c1, ...)     # torch.Tensor.add_(...)
        ...
        return {'X@3': v7}, [v12]   # the run's result, its dicts and lists written out

f·: the functions called (torch.bmm, Tensor.add_, ...), c·: everything else they were given
(weights, index tensors, slices, sizes, scalars), bound once as the function's globals.
Calls that return no tensor (shape queries) were only the plan deciding something; their
answers are already in the recorded arguments, so they are not replayed; nor are views of
constants only (a weight's rows, a constant slot broadcast), which are constants themselves,
taken once while tracing and bound as globals, nor views that change nothing (an expand to the
batch size a tensor has, `contiguous` of a contiguous one, a reshape to its own shape): their
result is their input, which takes their place (at B = 1 about 60 of newton_logistic's 890
calls). Tensors are told
apart by identity while they live (a freed tensor's variable is forgotten, its id may come
back), and lines are written as the calls happen, so tracing frees memory as a plain run does.

Replaying the same calls on the same shapes computes the same numbers bit for bit (tests/
test_executor.py). The traced function is specific to the shapes of its inputs: the executor
keys it by (n, batch, dtype, device, watch).
"""
from __future__ import annotations

import re
import weakref

import torch
from torch.overrides import TorchFunctionMode

# calls whose answer depends on the values: a plan that makes one cannot be replayed as is
_DATA_READS = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__float__,
               torch.Tensor.__int__, torch.Tensor.__bool__, torch.Tensor.__index__,
               torch.Tensor.numpy}


class NotTraceable(Exception):
    """The plan's run depended on the values it computed (it is interpreted instead)."""


class _Writer(TorchFunctionMode):
    """Writes every torch function called while active as a line of the generated function,
    as it is called (so that the run frees its tensors as usual: a recording that kept them
    would hold every intermediate of the forward at once)."""

    def __init__(self, inputs):
        super().__init__()
        self.names: dict[int, str] = {}          # id of a live tensor → its variable
        self.glob: dict[str, object] = {}
        self.consts: dict[int, str] = {}
        self.funcs: dict = {}
        self.views: dict[str, str] = {}          # a view's call → the variable holding it
        self.lines: list[str] = []
        self.count = 0
        for i, t in enumerate(inputs):
            self.names[id(t)] = f"s{i}"

    def name(self, t: torch.Tensor, var: str | None = None) -> str:
        """Give t a variable (a new one unless `var`), forgotten when t is freed (its id may
        then be another tensor's)."""
        if var is None:
            var = f"v{self.count}"
            self.count += 1
        self.names[id(t)] = var
        weakref.finalize(t, self.names.pop, id(t), None)
        return var

    def const(self, obj) -> str:
        # equal indices (tuples of slices, sizes) are one global, so that the same view of the
        # same tensor, asked for twice with equal but distinct index objects, is taken once
        key = ("=", type(obj), repr(obj)) if _by_value(obj) else id(obj)
        if key not in self.consts:
            self.consts[key] = f"c{len(self.consts)}"
            self.glob[self.consts[key]] = obj
        return self.consts[key]

    def arg(self, a) -> str:
        if isinstance(a, torch.Tensor):
            return self.names.get(id(a)) or self.const(a)
        if isinstance(a, (list, tuple)) and any(_has_tensor(x) for x in a):
            inner = ", ".join(self.arg(x) for x in a)
            return f"[{inner}]" if isinstance(a, list) else f"({inner}{',' if len(a) == 1 else ''})"
        if a is None or isinstance(a, (bool, int)) or isinstance(a, float) and _plain(a):
            return repr(a)
        return self.const(a)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _DATA_READS:
            raise NotTraceable(f"the plan read a value ({getattr(func, '__name__', func)})")
        out = func(*args, **kwargs)
        if out is not None and not _has_tensor(out):
            return out                           # a query (shape, dtype): its answer is baked
        fk = _func_key(func)
        if fk not in self.funcs:
            self.funcs[fk] = f"f{len(self.funcs)}"
            self.glob[self.funcs[fk]] = func
        parts = [self.arg(a) for a in args] + [f"{k}={self.arg(v)}" for k, v in kwargs.items()]
        call = f"{self.funcs[fk]}({', '.join(parts)})"
        lines = self.lines
        if isinstance(out, torch.Tensor) and _is_view(func, args, kwargs) and \
                not any(id(a) in self.names for a in _tensors(args)):
            return out        # a view of constants is a constant: taken once, here (a global)
        if _same_view(func, args, kwargs, out) and id(args[0]) in self.names:
            if out is not args[0]:   # a view that changes nothing (expand to the batch it has,
                self.name(out, self.names[id(args[0])])    # contiguous of a contiguous one)
            return out               # is its input: no line
        if isinstance(out, torch.Tensor) and _is_view(func, args, kwargs):
            if call in self.views:               # the same view of the same tensor: reuse it
                self.name(out, self.views[call])
                return out
            self.views[call] = self.name(out)
            lines.append(f"    {self.views[call]} = {call}")
        elif out is None:                        # __setitem__ and the like: a side effect
            lines.append(f"    {call}")
        elif isinstance(out, torch.Tensor):
            if any(out is a for a in args) or out is kwargs.get("out"):
                lines.append(f"    {call}")      # in place, or into out=: the same tensor
            else:
                lines.append(f"    {self.name(out)} = {call}")
        else:                                    # a tuple of tensors (aminmax, ...)
            tmp = f"r{len(lines)}"
            lines.append(f"    {tmp} = {call}")
            for j, t in enumerate(out):
                if isinstance(t, torch.Tensor):
                    lines.append(f"    {self.name(t)} = {tmp}[{j}]")
        return out


class Traced:
    """The generated function: it returns the result's structure itself (its return statement
    writes the dicts and lists out), so that a call is the tensor calls and one return; a
    loop's segment runs once per iteration."""

    def __init__(self, fn, source: str, n_calls: int):
        self.fn, self.source, self.n_calls = fn, source, n_calls

    def __call__(self, *inputs):
        return self.fn(*inputs)


def trace(body, inputs: list[torch.Tensor]) -> tuple[Traced, object]:
    """Run body(*inputs) once, writing its tensor calls out as a function; returns that
    function and the result of this run (so that tracing costs no extra forward)."""
    w = _Writer(inputs)
    with w:
        result = body(*inputs)
    returned: set[str] = set()
    out = _returned(result, w, returned)
    params = ", ".join(f"s{i}" for i in range(len(inputs)))
    source = (f"def forward({params}):\n" + "\n".join(_freed(w.lines, returned)) +
              f"\n    return {out}\n")
    glob = w.glob
    exec(compile(source, "<tcompile structured executor>", "exec"), glob)
    return Traced(glob["forward"], source, len(w.lines)), result


_VARIABLE = re.compile(r"\b[vr]\d+\b")


def _freed(lines: list[str], returned: set[str]) -> list[str]:
    """The lines with `del` after each variable's last use: a function's locals live until it
    returns, so without this the generated forward would hold every intermediate at once
    (the plan run as Python frees each as soon as it is dropped)."""
    last: dict[str, int] = {}
    for i, line in enumerate(lines):
        for var in _VARIABLE.findall(line):
            last[var] = i
    dead: dict[int, list[str]] = {}
    for var, i in last.items():
        if var not in returned:
            dead.setdefault(i, []).append(var)
    out = []
    for i, line in enumerate(lines):
        out.append(line)
        if i in dead:
            out.append(f"    del {', '.join(sorted(dead[i]))}")
    return out


_VIEWS = {"mT", "T", "mH", "expand", "unsqueeze", "transpose", "narrow", "select", "__getitem__"}


def _func_key(func):
    """One key per function: a property's getter is a fresh method-wrapper on every access."""
    if type(func).__name__ == "method-wrapper":
        return (id(func.__self__), func.__name__)
    return id(func)


def _is_view(func, args, kwargs) -> bool:
    """A call that returns a view of its first argument (so calling it again, even after that
    tensor was written in place, gives the same view): basic indexing, transposes, expand."""
    name = getattr(getattr(func, "__self__", None), "__name__", None) \
        if type(func).__name__ == "method-wrapper" else getattr(func, "__name__", None)
    if name not in _VIEWS or kwargs:
        return False
    if name == "__getitem__":
        idx = args[1] if isinstance(args[1], tuple) else (args[1],)
        return all(i is None or i is Ellipsis or isinstance(i, (int, slice)) for i in idx)
    return True


_SAME_VIEWS = _VIEWS | {"view", "reshape", "contiguous", "expand_as", "view_as", "squeeze"}


def _same_view(func, args, kwargs, out) -> bool:
    """Is `out` a view of args[0] with its geometry (size, strides, offset, dtype), by a view
    function (so that the input itself serves wherever it is used)?"""
    if not isinstance(out, torch.Tensor) or not args or not isinstance(args[0], torch.Tensor):
        return False
    name = getattr(getattr(func, "__self__", None), "__name__", None) \
        if type(func).__name__ == "method-wrapper" else getattr(func, "__name__", None)
    a = args[0]
    return name in _SAME_VIEWS and "out" not in (kwargs or {}) and out.dtype == a.dtype and \
        out.shape == a.shape and out.stride() == a.stride() and \
        out.storage_offset() == a.storage_offset() and out.data_ptr() == a.data_ptr()


def _by_value(obj) -> bool:
    """An index or size whose repr determines it (slices, Ellipsis, ints, strings, tuples of
    them): equal ones are interchangeable."""
    if isinstance(obj, (tuple, list)):
        return all(_by_value(x) for x in obj)
    if isinstance(obj, slice):
        return all(x is None or type(x) is int for x in (obj.start, obj.stop, obj.step))
    return obj is None or obj is Ellipsis or type(obj) in (int, str, bool)


def _plain(a) -> bool:
    """A literal that repr() writes back exactly (floats: finite ones)."""
    if isinstance(a, float):
        return a == a and a not in (float("inf"), float("-inf"))
    return True


def _tensors(args):
    for a in args:
        if isinstance(a, torch.Tensor):
            yield a
        elif isinstance(a, (list, tuple)):
            yield from _tensors(a)


def _has_tensor(x) -> bool:
    if isinstance(x, torch.Tensor):
        return True
    if isinstance(x, (list, tuple)):
        return any(_has_tensor(y) for y in x)
    return False


def _returned(obj, w: _Writer, names: set) -> str:
    """The result as a Python expression: a tensor by its variable (or a global, a constant
    tensor), dicts, lists and tuples written out, anything else by value or as a global.
    `names` collects the variables it reads (they are not freed before the return)."""
    if isinstance(obj, torch.Tensor):
        var = w.names.get(id(obj))
        if var is None:
            return w.const(obj)
        names.add(var)
        return var
    if isinstance(obj, dict):
        return "{" + ", ".join(f"{_returned(k, w, names)}: {_returned(v, w, names)}"
                               for k, v in obj.items()) + "}"
    if isinstance(obj, list):
        return "[" + ", ".join(_returned(v, w, names) for v in obj) + "]"
    if isinstance(obj, tuple):                   # named ones (aminmax) come back plain
        inner = ", ".join(_returned(v, w, names) for v in obj)
        return f"({inner}{',' if len(obj) == 1 else ''})"
    if obj is None or isinstance(obj, (bool, int, str)) or isinstance(obj, float) and _plain(obj):
        return repr(obj)
    return w.const(obj)


__all__ = ["trace", "Traced", "NotTraceable"]
