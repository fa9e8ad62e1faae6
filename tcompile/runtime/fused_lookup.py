"""PL-table lookups in one pass: a small C kernel, compiled on first use, called by ctypes.

A table pass by torch (exec_ops._Tables) is 6-13 elementwise calls per entry (s, clamp, the
cell, its cast, the kinks, two gathers, a multiply-add, the sum of a product's squares), each a
read and a write of the whole pass. This kernel does a pass in one: per block of entries it
forms s, finds the interval and writes slope·s + intercept (summed over a product's tables),
with the same floating-point operations in the same order as the torch path, so its results
are bit for bit the torch path's (`probe` checks that on this machine before it is used):

* torch's add with alpha, addcmul and the cell's add(shift, s, alpha) are fused multiply-adds
  on a CPU with FMA (the `_fma` variant: C fma()) or a multiply then an add (`_mad`), the
  source compiled with -ffp-contract=off so the compiler adds or removes none;
* clamps keep s where s equals a bound (signed zeros) and pass NaN on, like torch.clamp;
* intervals by searchsorted are torch's lower bound (the same comparisons, NaN → the end);
* the cast to int32 truncates; a NaN s (which the torch path sends to cell 0, exec_ops.
  _Tables) is reported, and the call is then made again by the torch path: NaN out.

The kernel is plain C (no torch headers: it compiles in about a second), keyed by a hash of
its source, the compiler, the flags and the CPU, and kept in a per-user cache directory
($TCOMPILE_CACHE_DIR, else $XDG_CACHE_HOME/tcompile, else ~/.cache/tcompile), written under a
temporary name and renamed into place (atomic: processes compiling at once each write their
own file and the last rename wins with an identical one). The probe's verdict (which variant,
if any, matches torch for each dtype) is kept beside it, keyed by all it depends on besides the
library — torch's version, the CPU capability torch's kernels dispatch to (ATEN_CPU_CAPABILITY
may lower it, and with it torch's use of FMA) and the source of the torch path it compares
with —, so that only the first process on a machine runs it: the probe takes ~14 ms and runs
the torch path's table ops, whose libtorch code a run on the kernel never needs
(newton_logistic at d = 5, B = 1024: 1–2 MiB of the process's resident set,
bench/README.md). The cache is never inside the repository or artifacts, and a build does not
depend on it: it only changes how the executor evaluates a table. Without a compiler, when
compiling or loading fails, when the probe finds the kernel not bit-identical to torch here,
or with TCOMPILE_FUSED_LOOKUP=0, tables run by torch.
"""
from __future__ import annotations

import ctypes
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from array import array
from pathlib import Path

import numpy as np
import torch
from torch.overrides import handle_torch_function, has_torch_function

from .files import atomic_write_bytes

ENV_SWITCH = "TCOMPILE_FUSED_LOOKUP"      # "0", "off", "no", "false": tables run by torch
ENV_CACHE = "TCOMPILE_CACHE_DIR"
ENV_CC = "TCOMPILE_CC"                    # the C compiler (else $CC, else cc)
FLAGS = ("-O3", "-ffp-contract=off", "-shared", "-fPIC")
NATIVE = ("-march=native",)               # tried first; without it if the compiler refuses

SOURCE = r"""
/* tcompile: one pass per PL table lookup (see tcompile/runtime/fused_lookup.py). */
#include <stdint.h>
#include <math.h>

typedef struct {
    int64_t T, O, nx, m, K, L, cells;
    const void *coef, *lo, *hi, *shift, *inv_h, *jmin, *jmax, *kinks;
    const void *g_slope, *g_icpt, *bp, *s_slope, *s_icpt;
} Tab;

/* a: int64 arguments: B, I, E (entries as B x I rows of E), dst's strides over B and I, its
   stride between outputs, then per x: pointer, strides over B, I and E (elements; 0 where
   broadcast); dst: the output (stride 1 over E). */
#define BLOCK 256
#define KERNEL(NAME, REAL, MADD)                                                              \
int64_t NAME(const Tab *t, int64_t mode, const int64_t *a, REAL *dst)                         \
{                                                                                             \
    const int64_t T = t->T, O = t->O, nx = t->nx, m = t->m, K = t->K, cells = t->cells;       \
    const int64_t B = a[0], I = a[1], E = a[2], db = a[3], di = a[4], dO = a[5];              \
    const REAL *coef = t->coef, *bp = t->bp;                                                  \
    const REAL *slope = mode ? t->g_slope : t->s_slope;                                       \
    const REAL *icpt = mode ? t->g_icpt : t->s_icpt;                                          \
    const int64_t ostep = mode ? t->L : T * (K + 1);                                          \
    int64_t bad = 0;                                                                          \
    REAL s[BLOCK];                                                                            \
    int32_t k[BLOCK];                                                                         \
    for (int64_t b = 0; b < B; b++)                                                           \
    for (int64_t r = 0; r < I; r++)                                                           \
    for (int64_t e0 = 0; e0 < E; e0 += BLOCK) {                                               \
        const int64_t n = E - e0 < BLOCK ? E - e0 : BLOCK;                                    \
        REAL *restrict out = dst + b * db + r * di + e0;                                      \
        for (int64_t i = 0; i < T; i++) {                                                     \
            /* s = x0 + c1 x1 + ... (torch: add(x0, x1, alpha=c1), add_(x2, alpha=c2)) */     \
            for (int64_t c = 0; c < nx; c++) {                                                \
                const int64_t *xa = a + 6 + 4 * c;                                            \
                const int64_t st = xa[3];                                                     \
                const REAL *restrict x = (const REAL *)xa[0] + b * xa[1] + r * xa[2] + e0 * st; \
                const REAL w = coef[i * nx + c];                                              \
                if (c == 0) {                                                                 \
                    if (st == 1) for (int64_t e = 0; e < n; e++) s[e] = x[e];                 \
                    else for (int64_t e = 0; e < n; e++) s[e] = x[e * st];                    \
                } else if (st == 1) {                                                         \
                    for (int64_t e = 0; e < n; e++) s[e] = MADD(x[e], w, s[e]);               \
                } else if (st == 0) {                                                         \
                    const REAL x0 = x[0];                                                     \
                    for (int64_t e = 0; e < n; e++) s[e] = MADD(x0, w, s[e]);                 \
                } else {                                                                      \
                    for (int64_t e = 0; e < n; e++) s[e] = MADD(x[e * st], w, s[e]);          \
                }                                                                             \
            }                                                                                 \
            if (mode == 0) {          /* torch.searchsorted's lower bound, +i's offset */     \
                const REAL *restrict row = bp + i * K;                                        \
                for (int64_t e = 0; e < n; e++) {                                             \
                    int64_t lo = 0, hi = K;                                                   \
                    while (lo < hi) {                                                         \
                        const int64_t mid = lo + ((hi - lo) >> 1);                            \
                        if (!(row[mid] >= s[e])) lo = mid + 1; else hi = mid;                 \
                    }                                                                         \
                    k[e] = (int32_t)(lo + i * (K + 1));                                       \
                }                                                                             \
            } else if (mode == 2) {   /* s clamped to the table's ends, then its cell */       \
                const REAL lo = ((const REAL *)t->lo)[i], hi = ((const REAL *)t->hi)[i];      \
                const REAL ih = ((const REAL *)t->inv_h)[i], sh = ((const REAL *)t->shift)[i]; \
                int nan = 0;                                                                  \
                for (int64_t e = 0; e < n; e++) {                                             \
                    REAL v = s[e];                                                            \
                    v = v < lo ? lo : v;                                                      \
                    v = v > hi ? hi : v;                                                      \
                    s[e] = v;                                                                 \
                    const REAL j = MADD(v, ih, sh);                                           \
                    const int bad_e = v != v;                                                 \
                    nan |= bad_e;                                                             \
                    k[e] = bad_e ? 0 : (int32_t)j;                                            \
                }                                                                             \
                bad |= nan;                                                                   \
            } else {                  /* the cell clamped, then the cell's kinks below s */   \
                const REAL lo = ((const REAL *)t->jmin)[i], hi = ((const REAL *)t->jmax)[i];  \
                const REAL ih = ((const REAL *)t->inv_h)[i], sh = ((const REAL *)t->shift)[i]; \
                const REAL *restrict kinks = t->kinks;                                        \
                int nan = 0;                                                                  \
                for (int64_t e = 0; e < n; e++) {                                             \
                    REAL j = MADD(s[e], ih, sh);                                              \
                    j = j < lo ? lo : j;                                                      \
                    j = j > hi ? hi : j;                                                      \
                    const int bad_e = j != j;                                                 \
                    nan |= bad_e;                                                             \
                    k[e] = bad_e ? 0 : (int32_t)j;                                            \
                }                                                                             \
                bad |= nan;                                                                   \
                if (m) {                                                                      \
                    for (int64_t e = 0; e < n; e++) {                                         \
                        const int32_t jj = k[e];                                              \
                        int32_t q = (int32_t)(m + 1) * jj;                                    \
                        for (int64_t p = 0; p < m; p++) q += kinks[p * cells + jj] < s[e];    \
                        k[e] = q;                                                             \
                    }                                                                         \
                }                                                                             \
            }                                                                                 \
            if (O == 1) {                                                                     \
                if (i == 0) for (int64_t e = 0; e < n; e++)                                   \
                    out[e] = MADD(slope[k[e]], s[e], icpt[k[e]]);                             \
                else for (int64_t e = 0; e < n; e++)                                          \
                    out[e] = out[e] + MADD(slope[k[e]], s[e], icpt[k[e]]);                    \
            } else {                                                                          \
                for (int64_t o = 0; o < O; o++) {                                             \
                    const REAL *restrict so = slope + o * ostep, *restrict io = icpt + o * ostep; \
                    REAL *restrict oo = out + o * dO;                                         \
                    for (int64_t e = 0; e < n; e++) oo[e] = MADD(so[k[e]], s[e], io[k[e]]);   \
                }                                                                             \
            }                                                                                 \
        }                                                                                     \
    }                                                                                         \
    return bad;                                                                               \
}

#define FMA64(a, b, c) fma(a, b, c)
#define FMA32(a, b, c) fmaf(a, b, c)
#define MAD(a, b, c) ((a) * (b) + (c))
KERNEL(lookup_f64_fma, double, FMA64)
KERNEL(lookup_f32_fma, float, FMA32)
KERNEL(lookup_f64_mad, double, MAD)
KERNEL(lookup_f32_mad, float, MAD)
"""


class _Tab(ctypes.Structure):
    """The C kernel's view of one _Tables: sizes, then pointers to its constant arrays."""
    _fields_ = [(n, ctypes.c_int64) for n in ("T", "O", "nx", "m", "K", "L", "cells")] + \
               [(n, ctypes.c_void_p) for n in ("coef", "lo", "hi", "shift", "inv_h", "jmin",
                                               "jmax", "kinks", "g_slope", "g_icpt", "bp",
                                               "s_slope", "s_icpt")]


_DTYPES = {torch.float64: "f64", torch.float32: "f32"}
_lock = threading.Lock()
_state: dict = {}          # "kernels": {dtype: C function} once loaded; "why": why not


def enabled() -> bool:
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "off", "no", "false")


def cache_dir() -> Path:
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tcompile"


def _compiler() -> str | None:
    cc = os.environ.get(ENV_CC) or os.environ.get("CC") or "cc"
    return shutil.which(cc)


def _cpu() -> str:
    """What -march=native depends on (a cache shared by machines of other CPUs must not load
    a kernel built for this one)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        import platform
        return platform.processor() + platform.machine()


def _build(cc: str) -> Path:
    """The kernel's shared library in the cache: compiled unless already there."""
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    last = None
    for flags in (FLAGS + NATIVE, FLAGS):
        key = hashlib.sha256("\0".join([SOURCE, cc, version, " ".join(flags), _cpu(),
                                         sys.platform]).encode()).hexdigest()[:20]
        out = cache_dir() / f"lookup-{key}.so"
        if out.exists():
            return out
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".lookup-", suffix=".so", dir=out.parent)
        os.close(fd)
        src = tmp[:-3] + ".c"
        try:
            Path(src).write_text(SOURCE)
            r = subprocess.run([cc, *flags, "-o", tmp, src, "-lm"], capture_output=True,
                               text=True, timeout=120)
            if r.returncode == 0:
                os.replace(tmp, out)           # atomic: a reader sees no half-written file
                return out
            last = r.stderr.strip()[-500:]
        finally:
            for p in (tmp, src):
                if os.path.exists(p):
                    os.unlink(p)
    raise RuntimeError(f"{cc} failed: {last}")


def _verdict_path(library: Path, tables_cls) -> Path | None:
    """Where the probe's verdict on `library` is kept: named for what the verdict depends on
    besides the library (whose name covers its source, compiler, flags and CPU); None where
    the torch path's source cannot be read (then every process probes)."""
    try:
        sources = b"".join(Path(m.__file__).read_bytes() for m in (
            sys.modules[tables_cls.__module__], sys.modules[__name__],
            sys.modules[tables_cls.__module__.rsplit(".", 1)[0] + ".pl_tables"]))
    except (KeyError, TypeError, OSError):
        return None
    key = hashlib.sha256(b"\0".join([torch.__version__.encode(),
                                      torch.backends.cpu.get_cpu_capability().encode(),
                                      sources])).hexdigest()[:20]
    return library.with_name(f"{library.stem}-probe-{key}.json")


def _read_verdict(path: Path) -> dict | None:
    """{dtype tag: variant or None} as written by _write_verdict; None when absent or not
    such a file (then the probe runs again and writes it anew)."""
    try:
        got = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    ok = isinstance(got, dict) and set(got) == set(_DTYPES.values()) and all(
        v in (None, "fma", "mad") for v in got.values())
    return got if ok else None


def _write_verdict(path: Path, verdict: dict) -> None:
    """Written atomically (files.atomic_write_bytes: a reader sees the old file or the new
    one); a cache that cannot be written only means the next process probes again."""
    try:
        atomic_write_bytes(path, json.dumps(verdict, sort_keys=True).encode())
    except OSError:
        pass


def _load(tables_cls) -> dict:
    """dtype → the C function whose results equal the torch path's here (checked by `probe`,
    or by an earlier process's probe of the same library, torch and torch path: its verdict
    file); empty when the kernel is off, cannot be built, or matches torch in no variant."""
    with _lock:
        if "kernels" in _state:
            return _state["kernels"]
        kernels: dict = {}
        _state["kernels"] = kernels           # the probe below runs tables by torch meanwhile
        try:
            cc = _compiler()
            if cc is None:
                raise RuntimeError("no C compiler (cc, $CC or $TCOMPILE_CC)")
            path = _build(cc)
            lib = ctypes.CDLL(str(path))
            where = _verdict_path(path, tables_cls)
            known = None if where is None else _read_verdict(where)
            verdict = {}                      # dtype tag → the variant that matches, or None
            for dtype, tag in _DTYPES.items():
                if known is not None:
                    verdict[tag] = known[tag]
                else:
                    verdict[tag] = next((v for v in ("fma", "mad") if probe(
                        _function(lib, tag, v), dtype, tables_cls)), None)
                if verdict[tag] is not None:
                    kernels[dtype] = _function(lib, tag, verdict[tag])
            if known is None and where is not None:
                _write_verdict(where, verdict)
            _state["path"] = path
            _state["why"] = None if kernels else "the kernel's results differ from torch's here"
        except Exception as exc:          # no compiler, a failed compile or load: torch path
            _state["why"] = f"{type(exc).__name__}: {exc}"
        return kernels


def _function(lib, tag: str, variant: str):
    fn = getattr(lib, f"lookup_{tag}_{variant}")
    fn.restype = ctypes.c_int64
    fn.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p]
    return fn


def kernel(dtype, tables_cls):
    """The checked C function for dtype, or None (the torch path): off by the environment,
    no compiler, or not bit-identical on this machine to tables_cls (exec_ops._Tables, passed
    in: this module does not import exec_ops, which imports it) by torch (`why_not` says
    which)."""
    if not enabled():
        return None
    return _load(tables_cls).get(dtype)


def why_not() -> str | None:
    """Why there is no kernel (None: there is one, or it was never asked for)."""
    if not enabled():
        return f"{ENV_SWITCH} is off"
    return _state.get("why")


def _reset() -> None:
    """Forget the loaded kernel (tests: a changed environment is seen at the next use)."""
    with _lock:
        _state.clear()


class Fused:
    """One _Tables' constants as the kernel reads them, and how to call it. `passes` is the
    torch path for the same call (run instead when the kernel reports a NaN s)."""

    def __init__(self, fn, tables, dtype, passes):
        self.fn, self.passes, self.dtype = fn, passes, dtype
        keep = []

        def ptr(a):
            if a is None:
                return None
            t = a if isinstance(a, torch.Tensor) else \
                torch.as_tensor(np.asarray(a, dtype=np.float64), dtype=dtype)
            t = t.contiguous()
            keep.append(t)
            return t.data_ptr()
        tb = _Tab()
        tb.T, tb.O = tables.T, tables.O
        tb.nx = len(tables.coef[0])
        tb.coef = ptr([c for co in tables.coef for c in co])
        tb.K = tables.bp.shape[-1]
        tb.bp, tb.s_slope, tb.s_icpt = ptr(tables.bp), ptr(tables.s_slope), ptr(tables.s_icpt)
        if tables.grid is not None:
            tb.m = tables.m
            tb.cells = sum(G for G, _ in tables.grid)
            tb.L = tb.cells * (tables.m + 1)
            # joined by numpy: torch's stack and cat would page in code the forward never
            # runs (exec_ops.host)
            tb.shift = ptr(torch.from_numpy(np.stack([s.numpy() for s in tables.shift])))
            tb.inv_h, tb.jmin, tb.jmax = ptr(tables.inv_h), ptr(tables.jmin), ptr(tables.jmax)
            tb.kinks = ptr(torch.from_numpy(np.concatenate([k.numpy() for k in tables.kinks]))) \
                if tables.m else None
            tb.g_slope, tb.g_icpt = ptr(tables.g_slope), ptr(tables.g_icpt)
            if tables.clamp is not None:
                tb.lo = ptr([lo for lo, _ in tables.clamp])
                tb.hi = ptr([hi for _, hi in tables.clamp])
        self.tab, self.keep, self.tables = tb, keep, tables
        self.ref = ctypes.addressof(tb)
        self.nx, self.O = tb.nx, tb.O
        self.plans: dict = {}

    def mode(self, N: int) -> int:
        """The torch path's way for a pass of N entries (exec_ops._Tables.path)."""
        return self.tables.path(N)

    def args(self, xs, shape, dst) -> array | None:
        """The kernel's int64 arguments (B, I, E, dst's strides over B and I and between
        outputs, then each x's pointer and strides over B, I, E), the dimensions merged where
        every operand allows it, so that the inner one is long (a pass over one token per
        problem: one row of B); None if dst's inner stride is not 1 (the torch path). The
        layout, which depends on shapes and strides only, is worked out once per layout."""
        key = (shape, *(x.stride() for x in xs), *(x.shape for x in xs))
        plan = self.plans.get(key)
        if plan is None:
            plan = self.plans[key] = self._plan(xs, shape)
        if plan is None:
            return None
        head, strides = plan
        a = array("q", head)
        for x, st in zip(xs, strides):
            a.append(x.data_ptr())
            a.extend(st)
        return a

    def _plan(self, xs, shape):
        B, I, E = shape
        O = self.O
        dims = [[B, O * I * E], [I, O * E], [E, 1]]        # size, dst stride, x strides...
        for x in xs:
            st = x.stride()
            for d in range(3):
                dims[d].append(st[d] if x.shape[d] > 1 else 0)
        dims = [d for d in dims if d[0] > 1] or [[1, 1] + [0] * len(xs)]
        k = len(dims) - 1
        while k > 0:                     # merge dims[k - 1] into dims[k] where strides chain
            if all(o == i * dims[k][0] for o, i in zip(dims[k - 1][1:], dims[k][1:])):
                dims[k] = [dims[k - 1][0] * dims[k][0]] + dims[k][1:]
                del dims[k - 1]
            k -= 1
        if dims[-1][1] != 1 and dims[-1][0] > 1:
            return None
        dims = [[1, 0] + [0] * len(xs)] * (3 - len(dims)) + dims
        head = (dims[0][0], dims[1][0], dims[2][0], dims[0][1], dims[1][1], E)
        return head, [tuple(d[2 + c] for d in dims) for c in range(len(xs))]


def lookup(f: Fused, xs: list, shape: tuple, dst: torch.Tensor) -> torch.Tensor:
    """The tables of f over entries of `shape` (batch, instances, tokens), into dst: one call
    of the C kernel (a torch function to exec_codegen's tracer: one line of generated code)."""
    if has_torch_function((*xs, dst)):
        return handle_torch_function(lookup, (*xs, dst), f, xs, shape, dst)
    a = f.args(xs, shape, dst)
    if a is None:
        f.passes(xs, shape, dst)
        return dst
    if f.fn(f.ref, f.mode(shape[0] * shape[1] * shape[2]), a.buffer_info()[0], dst.data_ptr()):
        f.passes(xs, shape, dst)               # a NaN s: the torch path (NaN out)
    return dst


def make(tables, dtype, device, passes) -> Fused | None:
    """The fused form of an exec_ops._Tables on the CPU, or None (the torch path)."""
    if torch.device(device).type != "cpu" or dtype not in _DTYPES:
        return None
    fn = kernel(dtype, type(tables))
    return None if fn is None else Fused(fn, tables, dtype, passes)


def _probe_tables(rng):
    """Small tables of the three kinds the torch path has: a product's two clamped squares
    (uniform kinks, flat ends), a two-output table on a grid with kinks, a table with no
    grid (searchsorted at any size)."""
    from .pl_tables import build_table
    t = -1.0 + 0.25 * np.arange(9)
    w = rng.normal(size=9)
    w[-1] = -w[:-1].sum()                            # flat beyond the last kink
    sq = build_table(np.ones(9), -t, w[None])
    clamped = [sq + (np.array([1.0, c]),) for c in (0.75, -0.75)]
    u = np.sort(rng.uniform(-3, 3, 40))
    a = rng.choice([-1.0, 1.0], 40) * rng.uniform(0.5, 2, 40)
    two = build_table(a, -a * u, rng.normal(size=(2, 40)))
    geo = np.geomspace(1e-3, 1e3, 30)
    seed = build_table(np.ones(30), -geo, rng.normal(size=(1, 30)))
    return [(clamped, 2), ([two + (np.array([1.0]),)], 1), ([seed + (np.array([1.0]),)], 1)]


def probe(fn, dtype, tables_cls) -> bool:
    """Does the C function give, bit for bit, what tables_cls (exec_ops._Tables) gives by
    torch, on this machine and this torch (torch's CPU kernels fuse multiply-adds or not by CPU), for each
    kind of table and pass (clamped grid, grid with kinks, searchsorted), entries spread over
    and beyond the tables' domains, on their breakpoints and at signed zeros?"""
    rng = np.random.default_rng(1)
    for tables, nx in _probe_tables(rng):
        tb = tables_cls(tables, dtype, "cpu")
        f = Fused(fn, tb, dtype, None)
        bp = np.concatenate([t[0] for t in tables])
        for B in (3, 40):                           # below and above SEARCH_BELOW entries
            shape = (B, 1, 9)
            N = B * 9
            vals = np.concatenate([rng.uniform(-4, 4, N), bp, [0.0, -0.0, 1e300, -1e300]])
            xs = [torch.as_tensor(rng.permutation(vals)[:N].reshape(shape), dtype=dtype)
                  for _ in range(nx)]
            O = tables[0][1].shape[1]
            want = torch.empty((B, O, 9), dtype=dtype)
            got = torch.empty_like(want)
            tb(xs, shape, want)
            a = f.args(xs, shape, got)                # held while the kernel reads it
            if fn(f.ref, f.mode(N), a.buffer_info()[0], got.data_ptr()):
                return False
            if not torch.equal(want.view(-1).view(_BITS[dtype]), got.view(-1).view(_BITS[dtype])):
                return False
    return True


_BITS = {torch.float64: torch.int64, torch.float32: torch.int32}


def library() -> Path | None:
    """The loaded kernel's file (None: not loaded, see why_not)."""
    return _state.get("path")


__all__ = ["ENV_SWITCH", "ENV_CACHE", "ENV_CC", "enabled", "cache_dir", "kernel", "why_not",
           "library", "make", "lookup", "probe", "Fused"]
