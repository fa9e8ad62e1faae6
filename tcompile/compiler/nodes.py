"""Every attribute a dataflow-graph node carries, in one place (as tracr's nodes.py does).

The dataflow graph (dataflow.py) is a networkx DiGraph whose node ids are ints and whose
node attributes are the entries below. Values are *canonical matrices*: every value is 2-D
(a scalar is 1×1, a vector [k] is k×1, a token vector [n] is n×1, token data [n, k] is n×k;
TOKEN = 'n' stands for the runtime token count). The lowering (lower.py) copies a node's
attributes into its Atom's `node` dict, so the same names are read there too.

Operations (attribute OP), with their arguments (attribute ARGS, node ids) and meaning:

    input     -           a program input (NAME; SYMMETRIC, SIGN, FLAG; LO/HI if bounded)
    const     -           compile-time scalar VALUE, 1×1
    n, inv_n  -           the token count and its reciprocal: runtime scalars the encoder writes
    number    -           a compile-time scalar VALUE stored as a runtime 1×1 value the encoder
                          writes: where a shared build carries a loop's compile-time number as
                          loop state (a decaying step size eta = 0.9 * eta: steady_state.py)
    ones      -           the n×1 column of ones (a constant row of the embedding)
    eye       -           the identity, K rows (None until it meets a square matrix)
    pattern   -           a constant 0/1 matrix of CSHAPE with ones at ENTRIES (SYMMETRIC when
                          it equals its transpose): the selectors of indexing, stack, tril/triu
                          and M * I (selection.py); heads read it as identity rows (exact)
    matmul    a, b        a @ b
    T         a           aᵀ
    add       a, b        a + b
    scale     a           C · a for a compile-time C
    smul      a, s        a · s for a runtime scalar s (1×1)
    ewmul     a, b        elementwise product (per-token broadcast allowed); TOL (absolute:
                          a `tol rel` statement refuses products of two real values)
    call      a           FUNC(a; *FARGS) elementwise, fitted on DOMAIN within TOL (TOL_REL);
                          a 1×1 constant argument is broadcast over CSHAPE: relu(1) of shape
                          (k, c) is the constant ones block `ones(k, c)` (an exact MLP piece
                          with no input), which `sum` over a small axis and a scalar added
                          to a matrix use
    bound     a           a itself, with the user's `(a) on [lo, hi]` as DOMAIN (LO/HI the
                          bounds, intersected with the checker's): the domain of the pieces
                          that read it, checked at run time like every domain

Division by a runtime value is `call reciprocal` on the divisor, with the DOMAIN the checker
resolved (`a / b on [lo, hi]`, or b's bounds) and the division's own TOL/TOL_REL, times the
numerator (smul for a scalar divisor, ewmul otherwise). max(u, v) is v + relu(u − v) and
min(u, v) is u − relu(u − v): add, scale and call nodes. Nodes are hash-consed on
(OP, ARGS, CSHAPE, attributes).
"""
from __future__ import annotations

OPS = frozenset({"input", "const", "n", "inv_n", "number", "ones", "eye", "pattern", "matmul", "T",
                 "add", "scale", "smul", "ewmul", "call", "bound"})

# attribute → what it holds. Every node has the first four.
OP = "op"                # str, one of OPS
ARGS = "args"            # tuple of argument node ids (its in-edges, in order)
CSHAPE = "cshape"        # (rows, cols), ints or TOKEN; None for a still-unsized c·I
LOC = "loc"              # SourceLocation of the program text it came from, or None
NAME = "name"            # input: the input's name
SYMMETRIC = "symmetric"  # input: declared symmetric (so stored once, either orientation);
                         #   pattern: equal to its transpose
ENTRIES = "entries"      # pattern: the (row, col) positions of its ones, sorted
SIGN = "sign"            # input: entries are ±1 (an exact MLP gate)
FLAG = "flag"            # input: entries are 0/1 (an exact MLP gate)
LO, HI = "lo", "hi"      # the checker's interval bounds on every entry (MLP domains)
VALUE = "value"          # const: the number
K = "k"                  # eye: its size (None: unsized)
C = "c"                  # scale: the compile-time coefficient
FUNC = "func"            # call: the scalar function's name (language/functions.py)
FARGS = "fargs"          # call: extra constant arguments (clip's bounds)
DOMAIN = "domain"        # call: the declared `on [lo, hi]`, or the argument's bounds, or None;
                         #   bound: the user's interval
INFERRED = "inferred"    # call: present (True) where DOMAIN is the argument's exact bounds, not
                         #   a declared `on` (the lowering widens it by upstream fit errors)
TOL = "tol"              # call/ewmul: the statement's (or call's) error budget, or None
TOL_REL = "tol_rel"      # call, and ewmul of x ** k: present (True) when TOL is relative (`tol rel eps`:
                         #   |error| <= eps·|exact value|); absent when TOL is absolute
NOTE = "note"            # call: why the compiler built it (the relu of an exact head product's
                         #   diag, compiler/dataflow.py); shown as the card's 'chosen:' line
VARS = "vars"            # the program variables this value is, as name@assignment-count
CARRIED = "carried"      # True: a loop's state, handed to the next iteration (always stored)
KEEP = "keep"            # True: a value of a variable the build was asked to keep
                         #   (compile_program(keep=...)): stored as a loop's state is
LOOP_STATE = "loop_state"  # shared builds only: "loop key/variable" on a loop's state at the end
                         #   of an iteration; rows.py pins every iteration's value to one row set
LOOP_WATCH = "loop_watch"  # shared builds only: "loop key/variable" on the value a variable the
                         #   body assigns but does not carry (ADMM's x = Q @ (...)) holds at the
                         #   end of an iteration: only where `until` may read it (shared_build.
                         #   _watch_points); no pass places or schedules by it
ITERATION = "iteration"  # shared builds only: ((loop key, index), ...) of the loop iterations
                         #   being walked when the node was made; depth.py keeps a loop's state
                         #   from being inlined into a later iteration of its loop (code after
                         #   the loop may inline it, as unrolled builds do) (steady_state.py)
TWIN = "twin"            # shared builds only: (iteration indices, (loop keys, loc, op, cshape),
                         #   occurrence) of a value made inside loops; the same value of the
                         #   previous iteration has the same key with one index lower, and
                         #   rows.py gives a value its twin's rows where they are free
ENTERS = "enters"        # shared builds only: ["loop key/variable", ...] on a value a loop's state
                         #   starts from (x0 in x = x0); rows.py offers it the state's rows
LOOP_PHASE = "loop_phase"  # shared builds, loops run by a kernel of k > 1 iterations only: on a
                         #   loop state, its place in its group of iterations (kernel_group), -1
                         #   at a group's end; rows.py pins it to the rows of the last value of
                         #   the same phase (a kernel's state returns to its rows every k). Not
                         #   set for a kernel folded from the plain walk (shared_build.
                         #   _Unrollings.unmarked: its rows return every k without it)
LOOP_KERNEL = "loop_kernel"  # with LOOP_PHASE: (k, iterations walked); depth.py lets an iteration
                         #   inline the state of an earlier iteration of its own group
LOOP_AHEAD = "loop_ahead"  # shared builds, loops that read ahead only (shared_build.
                         #   _choose_read_ahead): on a loop state (True), depth.py lets the next
                         #   iteration multiply out its definition as unrolled builds do (power
                         #   iteration's next S u is S v r), and keeps the state stored beside it
                         #   for `until`, trace and outputs
LOOP_FIRST = "loop_first"  # shared builds, on the first iteration's state of a loop chosen as
                         #   `key + FIRST_ONLY` (shared_build._choose_read_ahead): depth.py lets
                         #   the second iteration multiply out its definition, a first step made
                         #   of values from before the loop (X1 = 2I - S from X0 = I: X2 is one
                         #   layer on S, as unrolled), and the state need not stay stored
FIRST_ONLY = "@first"    # the suffix of such a loop's key in the shared build's `ahead` set
COPY = "copy"            # scale (C = 1) in a shared build: a loop state that is another state's
                         #   value of the previous iteration (`x_prev = x`), stored in rows of
                         #   its own (steady_state.py; the lowering stores it)
HOISTED = "hoisted"      # set by the lowering on a node it adds: the loop-invariant part of a
                         #   product (op matmul, ARGS its factors then its runtime scalars, in
                         #   chain order), computed once before the loop (lower.hoist_invariants)
CLAMP = "clamp"          # set by the lowering on a node it adds: clip(ARGS[0], *FARGS) read by a
                         #   piece gated by sign/flag inputs in place of its unbounded leaf,
                         #   where the piece is constant outside FARGS (lower._clamped_leaf)
REFINED = "refined"      # set by the lowering on a scalar refinement's values (refine.py): 'r' or
                         #   'w' on its seed/iterate nodes (calls it adds) and the refined call,
                         #   'arg' on its argument; rows.py clears their rows exactly

ATTRIBUTES = frozenset({OP, ARGS, CSHAPE, LOC, NAME, SYMMETRIC, ENTRIES, SIGN, FLAG, LO, HI, VALUE,
                        K, C, FUNC, FARGS, DOMAIN, INFERRED, TOL, TOL_REL, VARS, CARRIED, KEEP, LOOP_STATE,
                        LOOP_WATCH, ITERATION, TWIN, ENTERS, LOOP_PHASE, LOOP_KERNEL, LOOP_AHEAD, LOOP_FIRST, COPY, HOISTED, CLAMP, REFINED,
                        NOTE})
REQUIRED = (OP, ARGS, CSHAPE, LOC)


def kernel_group(i: int, k: int, times: int) -> tuple[int, int, bool]:
    """Iteration i of a loop walked `times` times by a kernel of k: (its group, its place in
    it — -1 at the group's end —, whether the group is whole). Groups of k from the first
    iteration; where k does not divide `times`, the r = times mod k iterations left over form
    a partial group just before the last whole one, so that the layers before and after the
    loop are those of a count k divides (the partial group runs between kernel applications)."""
    r = times % k
    split = times - k - r                     # the partial group starts here
    if i < split or r == 0:
        group, pos, size = i // k, i % k, k
    elif i < split + r:
        group, pos, size = split // k, i - split, r
    else:
        group, pos, size = split // k + 1, i - split - r, k
    return group, (-1 if pos == size - 1 else pos), size == k


def undocumented(attrs: dict) -> set[str]:
    """Attributes of a node that this module does not document (a test keeps it empty), plus
    any required one that is missing."""
    return (set(attrs) - ATTRIBUTES) | {a for a in REQUIRED if a not in attrs} | (
        {f"op={attrs.get(OP)!r}"} if attrs.get(OP) not in OPS else set())
