"""LSTM (Hochreiter & Schmidhuber 1997) as Keras's LSTMCell: gates i, f, c, o; carry (h, c)."""
from __future__ import annotations

from typing import Callable, Union

import jax.numpy as jnp

from rnn_jax import activations
from rnn_jax.cells.base import Gates, GatedCell, init_kernels, zeros_carry


def lstm(activation: Union[str, Callable] = "tanh",
         recurrent_activation: Union[str, Callable] = "sigmoid",
         use_bias: bool = True, unit_forget_bias: bool = True) -> GatedCell:
  """Params: kernel <[input, 4*units]>, recurrent_kernel <[units, 4*units]>, bias <[4*units]>
  (the forget gate's block starts at one with `unit_forget_bias`)."""
  act, gate = activations.get(activation), activations.get(recurrent_activation)

  def init(key, input_size, units, dtype=jnp.float32):
    params = init_kernels(key, input_size, units, 4, dtype)
    if use_bias:
      bias = jnp.zeros((4 * units,), dtype)
      params["bias"] = bias.at[units:2 * units].set(1.0) if unit_forget_bias else bias
    return params

  def initial_carry(batch_size, units, dtype=jnp.float32):
    return zeros_carry(batch_size, units, dtype), zeros_carry(batch_size, units, dtype)

  def input_projection(params):
    return params["kernel"], params["bias"] if use_bias else None

  def recurrence(params, carry, xw_t, matmuls):
    h, c = carry
    i, f, g, o = (x + hu for x, hu in zip(jnp.split(xw_t, 4, axis=-1),
                                          matmuls(h, params["recurrent_kernel"])))
    c = gate(f) * c + gate(i) * act(g)
    h = gate(o) * act(c)
    return (h, c), h

  config = (("activation", activation), ("recurrent_activation", recurrent_activation),
            ("use_bias", use_bias), ("unit_forget_bias", unit_forget_bias))
  return GatedCell("lstm", init, initial_carry,
                   Gates(4, input_projection, recurrence, lambda carry: carry[0]), config)
