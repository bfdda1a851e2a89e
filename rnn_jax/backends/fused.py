"""The "fused" backend, the accelerators' gate layout, as cuDNN computes a layer: the
input projection hoisted out of the loop as one matmul over every step, then one fused
recurrent matmul per step (a batched one under per-gate recurrent dropout), autodiff.
"""
from __future__ import annotations

import jax.numpy as jnp

from rnn_jax.backends import gate_matmuls
from rnn_jax.backends.base import Backend, Embedded, Recurrence, gated_cells, gates_of
from rnn_jax.backends.loop import LoopBody


def loop_body(recurrence: Recurrence) -> LoopBody:
  gates = gates_of(recurrence.cell)
  kernel, bias = gates.input_projection(recurrence.params)
  xs = recurrence.xs
  if isinstance(xs, Embedded) and recurrence.input_mask is None:  # the table projected once
    xw = jnp.take(gate_matmuls.affine(xs.table, kernel, bias), xs.ids, axis=0)
  else:  # over all steps: the masks <[n, batch, features]> broadcast over time
    xw = gate_matmuls.project(recurrence.inputs(), kernel, bias, recurrence.input_mask,
                              gates.num_gates)

  def step(params, carry, xw_t, recurrent_mask):
    return gates.recurrence(params, carry, xw_t, gate_matmuls.fused_matmuls(recurrent_mask))[0]

  return LoopBody(recurrence.params, xw, recurrence.recurrent_mask, step)


FUSED = Backend("fused", "the accelerators' gate layout: the input projection hoisted, one "
                "fused recurrent matmul per step", cells=gated_cells, loop_body=loop_body)
