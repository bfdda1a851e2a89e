"""Elman RNN: h_t = f(x_t W + h_{t-1} U + b), as Keras's SimpleRNNCell."""
from __future__ import annotations

from typing import Callable, Union

import jax.numpy as jnp

from rnn_jax import activations
from rnn_jax.cells.base import Gates, GatedCell, init_kernels, zeros_carry


def simple_rnn(activation: Union[str, Callable] = "tanh", use_bias: bool = True) -> GatedCell:
  """Params: kernel <[input, units]>, recurrent_kernel <[units, units]>, bias <[units]>."""
  act = activations.get(activation)

  def init(key, input_size, units, dtype=jnp.float32):
    params = init_kernels(key, input_size, units, 1, dtype)
    if use_bias:
      params["bias"] = jnp.zeros((units,), dtype)
    return params

  def input_projection(params):
    return params["kernel"], params["bias"] if use_bias else None

  def recurrence(params, h, xw_t, matmuls):
    [hu] = matmuls(h, params["recurrent_kernel"])
    h = act(xw_t + hu)
    return h, h

  return GatedCell("simple_rnn", init, zeros_carry,
                   Gates(1, input_projection, recurrence, lambda h: h),
                   (("activation", activation), ("use_bias", use_bias)))
