"""minLSTM (Feng et al. 2024): see `rnn_jax.cells.min_gru`, which it shares its pieces with.

  f_t = sigmoid(x_t W_f + b_f),  i_t = sigmoid(x_t W_i + b_i),  h~_t = g(x_t W_h + b_h)
  h_t = f'_t * h_{t-1} + i'_t * h~_t,  f' = f / (f + i),  i' = i / (f + i)
"""
from __future__ import annotations

import jax

from rnn_jax.cells.base import Linear
from rnn_jax.cells.min_gru import MinCell, _gates, _init, _initial_carry, _projection, g, log_g

Array = jax.Array


def _log_gate_ratio(k_i: Array, k_f: Array) -> Array:
  """d = log i - log f = softplus(-k_f) - softplus(-k_i), so that f' = sigmoid(-d) and
  i' = sigmoid(d): the ratios f / (f + i) as one sigmoid, with no division by a small f + i."""
  return jax.nn.softplus(-k_f) - jax.nn.softplus(-k_i)


def min_lstm() -> MinCell:
  """minLSTM: gates i, f, h; h_t = f'_t h_{t-1} + i'_t g(k_h), f' and i' normalised."""

  def step(params, h, x_t):
    k_i, k_f, k_h = _gates(params, x_t, 3)
    d = _log_gate_ratio(k_i, k_f)
    h = jax.nn.sigmoid(-d) * h + jax.nn.sigmoid(d) * g(k_h)
    return h, h

  def gate_coefficients(params, gates, log_space=False):
    """[k_i, k_f, k_h] <float32>[..., units] -> (a, b) = (f', i' h~); logs with
    `log_space`: log f' = -softplus(d), log i' = -softplus(-d)."""
    del params
    k_i, k_f, k_h = gates
    d = _log_gate_ratio(k_i, k_f)
    if log_space:
      return -jax.nn.softplus(d), -jax.nn.softplus(-d) + log_g(k_h)
    return jax.nn.sigmoid(-d), jax.nn.sigmoid(d) * g(k_h)

  return MinCell("min_lstm", 3, _init(3), _initial_carry, step,
                 Linear(3, _projection, gate_coefficients))
