"""Minimal Gated Unit (Zhou et al. 2016, arXiv 1603.09420), as `flax.linen.MGUCell`.

    f  = sigmoid(x W_f + b_f + h U_f)
    n  = tanh(x W_n + b_n + f * (h U_n + b'_n))        (reset_gate=False: + h U_n)
    h' = (1 - f) * n + f * h

Written against the cell contract alone: three functions, no gate layout.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Union

import jax
import jax.numpy as jnp

from rnn_jax import activations
from rnn_jax.cells.base import glorot_uniform, orthogonal, zeros_carry


class MGU(NamedTuple):
  """Params: kernel <[input, 2*units]> (f, n), recurrent_kernel <[units, 2*units]>, bias
  <[2*units]> (the forget gate's half starts at one, as Flax's), recurrent_bias <[units]>
  (with `reset_gate`)."""
  activation: Callable = jnp.tanh
  recurrent_activation: Callable = jax.nn.sigmoid
  reset_gate: bool = True
  config: tuple = ()  # the factory's settings (see `GatedCell.config`)

  @property
  def name(self) -> str:
    return "mgu"

  def init(self, key, input_size, units, dtype=jnp.float32):
    k_kernel, k_recurrent = jax.random.split(key)
    params = {"kernel": glorot_uniform(k_kernel, (input_size, 2 * units), dtype),
              "recurrent_kernel": orthogonal(k_recurrent, (units, 2 * units), dtype),
              "bias": jnp.concatenate([jnp.ones((units,), dtype), jnp.zeros((units,), dtype)])}
    if self.reset_gate:
      params["recurrent_bias"] = jnp.zeros((units,), dtype)
    return params

  def initial_carry(self, batch_size, units, dtype=jnp.float32):
    return zeros_carry(batch_size, units, dtype)

  def step(self, params, h, x_t):
    x_f, x_n = jnp.split(x_t @ params["kernel"] + params["bias"], 2, axis=-1)
    h_f, h_n = jnp.split(h @ params["recurrent_kernel"], 2, axis=-1)
    f = self.recurrent_activation(x_f + h_f)
    if self.reset_gate:
      h_n = f * (h_n + params["recurrent_bias"])
    h = (1.0 - f) * self.activation(x_n + h_n) + f * h
    return h, h


def mgu(activation: Union[str, Callable] = "tanh",
        recurrent_activation: Union[str, Callable] = "sigmoid", reset_gate: bool = True) -> MGU:
  return MGU(activations.get(activation), activations.get(recurrent_activation), reset_gate,
             (("activation", activation), ("recurrent_activation", recurrent_activation),
              ("reset_gate", reset_gate)))
