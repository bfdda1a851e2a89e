"""The linear backends, for cells linear in their state (`cells.Linear`: minGRU, minLSTM):
every step's coefficients at once, then h_t = a_t * h_{t-1} + b_t over the whole
sequence (`rnn_jax.linear_scan`). A padded step keeps h (a = 1, b = 0).

  "linear_scan"  a sequential loop of multiply-adds with a written-out backward pass; the
                 CPU's choice: the associative scan's O(T log T) work is not.
  "associative"  `lax.associative_scan` in log space: O(log T) depth, for accelerators.

The projection is one [time * batch, features] matrix (XLA's CPU code differentiates a 2-D
matmul faster than one over [time, batch, features]); on CPU one matmul per gate, since
elementwise code reading column slices of one product is several times slower than code
reading whole arrays (docs/performance.md, "minGRU's whole-sequence form").
"""
from __future__ import annotations

import jax.numpy as jnp

from rnn_jax import linear_scan
from rnn_jax.backends.base import Backend, Recurrence, linear_cells, linear_of


def per_gate_projection(linear, params, x):
  """[x @ kernel_g + bias_g for each gate g], one matmul per gate."""
  kernel, bias = linear.input_projection(params)
  return [x @ k + b for k, b in zip(jnp.split(kernel, linear.num_gates, axis=-1),
                                    jnp.split(bias, linear.num_gates, axis=-1))]


def coefficients(recurrence: Recurrence, *, log_space: bool = False):
  """(a, b) <float>[time, batch, units] of every step of a linear cell's `Recurrence` (or
  their logs), from one [time * batch, features] matrix."""
  linear = linear_of(recurrence.cell)
  x = recurrence.dropped_inputs()
  time, batch = x.shape[:2]
  gates = per_gate_projection(linear, recurrence.params, x.reshape(time * batch, -1))
  a, b = linear.gate_coefficients(recurrence.params, gates, log_space=log_space)
  return a.reshape(time, batch, -1), b.reshape(time, batch, -1)


def _run(recurrence: Recurrence, *, log_space: bool):
  a, b = coefficients(recurrence, log_space=log_space)
  hs = linear_scan.linear_recurrence(a, b, recurrence.initial_state, mask=recurrence.mask,
                                     log_space=log_space,
                                     method="associative" if log_space else "sequential",
                                     time_major=True)
  return (hs if recurrence.return_sequences else None), hs[-1]


_NO_RECURRENT_DROPOUT = frozenset({"mask", "input_dropout"})
LINEAR_SCAN = Backend("linear_scan", "one matmul for every step's coefficients, then a "
                      "sequential linear recurrence", cells=linear_cells,
                      features=_NO_RECURRENT_DROPOUT,
                      run=lambda recurrence: _run(recurrence, log_space=False))
ASSOCIATIVE = Backend("associative", "one matmul for every step's coefficients, then a "
                      "log-space associative scan", cells=linear_cells,
                      features=_NO_RECURRENT_DROPOUT,
                      run=lambda recurrence: _run(recurrence, log_space=True))
