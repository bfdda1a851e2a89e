"""The portable backends: `lax.scan` over the cell's step, for any cell.

"scan" is differentiated by autodiff: the reference every other backend is tested
against. "recompute" saves only the states and recomputes each step in its backward
loop (`loop.scan_with_recompute`). A cell with a gate layout takes its per-gate
recurrent dropout masks through `gate_matmuls.plain_matmuls`.
"""
from __future__ import annotations

from rnn_jax.backends import gate_matmuls
from rnn_jax.backends.base import Backend, Recurrence, gates_of
from rnn_jax.backends.loop import LoopBody


def loop_body(recurrence: Recurrence, *, recompute: bool = False) -> LoopBody:
  gates = gates_of(recurrence.cell)
  masks = (recurrence.input_mask, recurrence.recurrent_mask)
  if gates is not None:
    def gated_step(params, carry, x_t, masks):
      input_mask, recurrent_mask = masks
      kernel, bias = gates.input_projection(params)
      xw_t = gate_matmuls.project(x_t, kernel, bias, input_mask, gates.num_gates)
      return gates.recurrence(params, carry, xw_t, gate_matmuls.plain_matmuls(recurrent_mask))[0]
    return LoopBody(recurrence.params, recurrence.inputs(), masks, gated_step,
                    recompute=recompute)

  def step(params, state, x_t, masks):
    input_mask, _ = masks
    return recurrence.step(params, state, x_t if input_mask is None else x_t * input_mask[0])[0]
  return LoopBody(recurrence.params, recurrence.inputs(), masks, step, recompute=recompute)


SCAN = Backend("scan", "lax.scan over the cell's step, autodiff: any cell; the reference",
               loop_body=loop_body)
RECOMPUTE = Backend("recompute", "the scan with a backward pass that saves only the states: "
                    "any cell", loop_body=lambda r: loop_body(r, recompute=True))
