"""GRU (Cho et al. 2014) as Keras's GRUCell: gates z, r, h."""
from __future__ import annotations

from typing import Callable, Union

import jax.numpy as jnp

from rnn_jax import activations
from rnn_jax.cells.base import Gates, GatedCell, init_kernels, zeros_carry


def gru(activation: Union[str, Callable] = "tanh",
        recurrent_activation: Union[str, Callable] = "sigmoid",
        use_bias: bool = True, reset_after: bool = True) -> GatedCell:
  """Keras's update, followed so that weights carry over:
      h_t = z * h_{t-1} + (1 - z) * h~
  (Cho et al. write h_t = (1 - z) * h_{t-1} + z * h~: the same family, z relabelled.)

  reset_after=False is Cho et al.'s form, the reset gate applied to h_{t-1} before the
  recurrent matmul: h~ = f(x W_h + (r * h_{t-1}) U_h + b_h). reset_after=True (Keras's
  default, cuDNN's and PyTorch's) applies it after, with a second, recurrent bias:
  h~ = f(x W_h + b_h + r * (h_{t-1} U_h + b'_h)); `bias` is then <[2, 3*units]>.
  Params: kernel <[input, 3*units]>, recurrent_kernel <[units, 3*units]>, bias.
  """
  act, gate = activations.get(activation), activations.get(recurrent_activation)

  def init(key, input_size, units, dtype=jnp.float32):
    params = init_kernels(key, input_size, units, 3, dtype)
    if use_bias:
      params["bias"] = jnp.zeros((2, 3 * units) if reset_after else (3 * units,), dtype)
    return params

  def input_projection(params):
    bias = None if not use_bias else params["bias"][0] if reset_after else params["bias"]
    return params["kernel"], bias

  def recurrence(params, h, xw_t, matmuls):
    units = h.shape[-1]
    kernel = params["recurrent_kernel"]
    x_z, x_r, x_h = jnp.split(xw_t, 3, axis=-1)
    if reset_after:
      h_z, h_r, h_h = matmuls(h, kernel)
      if use_bias:
        b_z, b_r, b_h = jnp.split(params["bias"][1], 3)
        h_z, h_r, h_h = h_z + b_z, h_r + b_r, h_h + b_h
      z, r = gate(x_z + h_z), gate(x_r + h_r)
      candidate = act(x_h + r * h_h)
    else:
      h_z, h_r = matmuls(h, kernel[:, :2 * units])
      z, r = gate(x_z + h_z), gate(x_r + h_r)
      [rh_h] = matmuls(r * h, kernel[:, 2 * units:], 2)
      candidate = act(x_h + rh_h)
    h = z * h + (1.0 - z) * candidate
    return h, h

  config = (("activation", activation), ("recurrent_activation", recurrent_activation),
            ("use_bias", use_bias), ("reset_after", reset_after))
  return GatedCell("gru", init, zeros_carry,
                   Gates(3, input_projection, recurrence, lambda h: h), config)
