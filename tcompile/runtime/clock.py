"""The sublayer clock: one numbering of the model's sublayers for the compiler, the runtime and
the inspection tools (each used to re-derive it inline, with room to disagree by one).

Time 0 is the encoder (the embedding's writes). Layer i — counting from 0, as the artifact's
layer list, `model.blocks[i]` and the CLI's `--layer` do — runs its attention at time 2i + 1
and its MLP at time 2i + 2. `states[t]`, the residual stream after time t, is what
`sublayer_states` returns (so `states[0]` is the embedding and `states[mlp_time(i)]` the stream
after layer i); a block's `written` is the time that writes it.

The scheduler counts layers from 1 (compiler/schedule.py: its layer L is index L − 1 here), so
that "ready at layer 0" means "written by the encoder".
"""
from __future__ import annotations

ENCODER = 0                      # the time of the encoder's writes


def attention_time(i: int) -> int:
    """The time of layer i's attention (i from 0)."""
    return 2 * i + 1


def mlp_time(i: int) -> int:
    """The time of layer i's MLP; states[mlp_time(i)] is the stream after layer i."""
    return 2 * i + 2


def before_layer(i: int) -> int:
    """The time whose state layer i reads (the previous layer's MLP, or the encoder)."""
    return 2 * i


def n_times(n_layers: int) -> int:
    """The last time of a model of n_layers layers (its final MLP)."""
    return 2 * n_layers


def layer_of(t: int) -> int:
    """The layer (from 0) whose sublayer runs at time t ≥ 1."""
    return (t - 1) // 2


def is_mlp(t: int) -> bool:
    """Whether time t is an MLP (the encoder's time 0 is not)."""
    return t > ENCODER and t % 2 == 0


def sublayer_of(t: int) -> str:
    """'embed', 'attn' or 'mlp': what runs at time t."""
    return "embed" if t == ENCODER else ("mlp" if t % 2 == 0 else "attn")
