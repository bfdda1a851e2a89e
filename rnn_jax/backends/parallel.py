"""The "parallel" backend: any cell in parallel over time by Newton's method
(`rnn_jax.parallel.evaluate`, method "deer" | "quasi_deer" | "elk" | "quasi_elk"), which
falls back to the sequential result with a warning where it does not converge. The
padding mask enters the step as one more input column, so that a padded step keeps the
state.
"""
from __future__ import annotations

import jax.numpy as jnp

from rnn_jax import parallel
from rnn_jax.backends.base import Backend, Recurrence
from rnn_jax.backends.loop import keep_where


def run(recurrence: Recurrence):
  x = recurrence.dropped_inputs()
  keep = (jnp.ones(x.shape[:2], x.dtype) if recurrence.mask is None
          else recurrence.mask.astype(x.dtype))
  xs = jnp.concatenate([x, keep[..., None]], axis=-1)

  def step(params, state, x_t):
    x_t, keep_t = x_t[..., :-1], x_t[..., -1] > 0
    new_state, _ = recurrence.step(params, state, x_t)
    new_state = keep_where(keep_t, new_state, state)
    return new_state, recurrence.output(new_state)

  solution = parallel.evaluate(step, recurrence.params, recurrence.initial_state, xs,
                               method=recurrence.method)
  return (solution.outputs if recurrence.return_sequences else None), solution.final_carry


PARALLEL = Backend("parallel", "any cell in parallel over time by Newton's method (DEER, "
                   "ELK), the sequential result where it does not converge",
                   features=frozenset({"mask", "input_dropout"}), run=run)
