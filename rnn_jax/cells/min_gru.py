"""minGRU and minLSTM (Feng et al. 2024, "Were RNNs All We Needed?", arXiv 2410.01201).

A GRU and an LSTM stripped until their gates read only x_t: no recurrent kernel, no
tanh on the state. Then h_t = a_t * h_{t-1} + b_t with a_t, b_t functions of x_t alone,
and a whole sequence is one matmul and one linear scan (`rnn_jax.linear_scan`; the unroll's
`associative` and `linear_scan` backends).

  minGRU:  z_t = sigmoid(x_t W_z + b_z),  h~_t = g(x_t W_h + b_h)
           h_t = (1 - z_t) * h_{t-1} + z_t * h~_t
  minLSTM: f_t = sigmoid(x_t W_f + b_f),  i_t = sigmoid(x_t W_i + b_i),  h~_t = g(x_t W_h + b_h)
           h_t = f'_t * h_{t-1} + i'_t * h~_t,  f' = f / (f + i),  i' = i / (f + i)

with the paper's g(x) = x + 0.5 for x >= 0, sigmoid(x) for x < 0 (continuous, positive:
the log-space scan needs b = i' h~ > 0). The output y_t is h_t; the carry is h alone.

Each cell bundles the contract of `rnn_jax.cells`,

  init(key, input_size, units, dtype) -> {"kernel": [input_size, G*units], "bias": [G*units]}
  initial_carry(batch_size, units, dtype) -> zeros <float32>[*batch, units]
  step(params, h, x_t) -> (h, h)

and the parallel form (`cells.Linear`), `coefficients(params, xs, log_space=False)` -> (a, b) or
(log a, log b) <float32>[batch, time, units] for every step in one matmul, which
`rnn_jax.linear_scan.linear_recurrence(a, b, h0)` turns into the states:

  cell = min_gru()
  params = cell.init(key, features, units)
  a, b = cell.coefficients(params, xs)                  # xs <float32>[batch, time, features]
  hs = linear_recurrence(a, b, cell.initial_carry(batch, units))  # [batch, time, units]

the same states as `lax.scan` over `cell.step`, in O(log time) depth. The log form
(log_space=True on both) is the paper's, for long sequences; 1 - z is computed as
sigmoid(-k_z) in every form, the same number without the cancellation where z ~ 1.

Gate order in `kernel` and `bias` (Keras's, less the gates that are gone): minGRU z, h
(GRU's z, r, h); minLSTM i, f, h (LSTM's i, f, c, o). Kernel glorot uniform over the fused
matrix, bias zeros, as Keras's defaults.

The initial state. The paper's log-space code takes log h_0 = log g(h_0): its parallel
scan needs h_0 > 0, so its h_0 is a pre-activation and a zero h_0 means a state of
g(0) = 0.5. Here the carry is the state itself: `initial_carry` is zeros, a state of 0,
and the step and the scan (which adds h_0 outside the logs) agree on it. To start from
the paper's state, pass `g(h_0)` as the carry.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from rnn_jax.cells.base import Linear, glorot_uniform

Array = jax.Array


class MinCell(NamedTuple):
  """A minGRU or minLSTM: the cell contract plus its `linear` form. See the module docstring."""
  name: str
  num_gates: int
  init: Callable[..., dict]
  initial_carry: Callable[..., Array]
  step: Callable[..., tuple[Array, Array]]
  linear: Linear
  config: tuple = ()  # the factory's settings, none (see `GatedCell.config`)

  def coefficients(self, params, xs: Array, log_space: bool = False) -> tuple[Array, Array]:
    """(a, b) <float32>[..., units] of inputs xs <float32>[..., features] (`Linear`)."""
    return self.linear.coefficients(params, xs, log_space)


def g(x: Array) -> Array:
  """The paper's positive activation for h~: x + 0.5 for x >= 0, sigmoid(x) below."""
  return jnp.where(x >= 0, x + 0.5, jax.nn.sigmoid(x))


def log_g(x: Array) -> Array:
  """log g(x), each branch computed stably: log(relu(x) + 0.5) and -softplus(-x)."""
  # relu keeps the log's argument positive on the branch `where` discards, so that its
  # gradient is not NaN there.
  return jnp.where(x >= 0, jnp.log(jax.nn.relu(x) + 0.5), -jax.nn.softplus(-x))


def _init(num_gates: int):
  def init(key, input_size, units, dtype=jnp.float32):
    kernel = glorot_uniform(key, (input_size, num_gates * units), dtype)  # bfloat16 too
    return {"kernel": kernel, "bias": jnp.zeros((num_gates * units,), dtype)}
  return init


def _initial_carry(batch_size, units, dtype=jnp.float32):
  shape = tuple(batch_size) if isinstance(batch_size, (tuple, list)) else (batch_size,)
  return jnp.zeros((*shape, units), dtype)


def _projection(params):
  return params["kernel"], params["bias"]


def _gates(params, x, num_gates):
  """x @ kernel + bias, split into `num_gates` arrays <float32>[..., units]."""
  return jnp.split(x @ params["kernel"] + params["bias"], num_gates, axis=-1)


def min_gru() -> MinCell:
  """minGRU: gates z, h; h_t = (1 - z_t) h_{t-1} + z_t g(k_h)."""

  def step(params, h, x_t):
    k_z, k_h = _gates(params, x_t, 2)
    h = jax.nn.sigmoid(-k_z) * h + jax.nn.sigmoid(k_z) * g(k_h)
    return h, h

  def gate_coefficients(params, gates, log_space=False):
    """[k_z, k_h] <float32>[..., units] -> (a, b) = (1 - z, z h~); logs with `log_space`:
    log z = -softplus(-k_z), log(1 - z) = -softplus(k_z)."""
    del params
    k_z, k_h = gates
    if log_space:
      return -jax.nn.softplus(k_z), -jax.nn.softplus(-k_z) + log_g(k_h)
    return jax.nn.sigmoid(-k_z), jax.nn.sigmoid(k_z) * g(k_h)

  return MinCell("min_gru", 2, _init(2), _initial_carry, step,
                 Linear(2, _projection, gate_coefficients))
