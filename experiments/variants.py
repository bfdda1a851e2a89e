"""The lecture's variants that every experiment offers: --activation, --reset_after, --head."""
from __future__ import annotations

from rnn_jax.layers import Dense, Maxout


def lecture_options(kind: str, activation=None, reset_after=None) -> dict:
  """The keyword arguments of recurrent layer `kind` ("simple_rnn" | "lstm" | "gru" | ...)
  for the lecture's choices that apply to it: the activation (not for minGRU/minLSTM,
  whose g is fixed) and GRU's reset_after; None leaves a layer's default."""
  options = {}
  if activation is not None and kind in ("simple_rnn", "lstm", "gru"):
    options["activation"] = activation
  if reset_after is not None and kind == "gru":
    options["reset_after"] = reset_after
  return options


def head(kind: str, units: int, outputs: int = 1) -> list:
  """The layers on top of the recurrent part: "dense" (Dense(outputs)) or "maxout"
  (Maxout(units, 2 pieces) then Dense(outputs)): maxout changes the width, so it is a
  head rather than an activation."""
  if kind == "dense":
    return [Dense(outputs)]
  if kind == "maxout":
    return [Maxout(units), Dense(outputs)]
  raise ValueError(f"head {kind!r} is not 'dense' or 'maxout'")
