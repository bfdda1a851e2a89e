"""The "per_gate" backend, the CPU's gate layout. At a few dozen units a step is a handful
of small kernels, and the cost is in their number and the memory they touch, not in
arithmetic (docs/performance.md has the measurements behind each choice):

  * The input projection stays inside the loop, one small matmul per step: hoisting it
    writes and reads back arrays of megabytes, which costs more on CPU than it saves.
  * One matmul per gate, and parameters enter the loop split per gate (`_Gates`): XLA's
    CPU code for a fusion that reads several column slices of one array is several times
    slower than for separate arrays.
  * The per-gate matmuls have a custom derivative (`_split_matmul`) whose transpose is one
    matmul per operand over the gates' joined cotangents.
  * Token inputs (`Embedded`) are projected once, as the table; the loop gathers each
    step's projected rows and the backward pass scatters their cotangents.
  * Gated cells differentiate with `loop.scan_with_recompute`; SimpleRNN, whose one small
    matmul costs more to recompute than to save, with autodiff.
"""
from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp

from rnn_jax.backends import gate_matmuls as plain
from rnn_jax.backends.base import Backend, Embedded, Recurrence, gated_cells, gates_of
from rnn_jax.backends.loop import LoopBody

Array = jax.Array


def loop_body(recurrence: Recurrence) -> LoopBody:
  gates = gates_of(recurrence.cell)
  params, input_mask = recurrence.params, recurrence.input_mask
  num_gates = gates.num_gates
  kernel, _ = gates.input_projection(params)
  loop_params = _split_gates(params, num_gates, kernel.shape[-1] // num_gates)
  projected_table = None
  if isinstance(recurrence.xs, Embedded) and input_mask is None:
    # table <[rows + 1, G*units]>, xs <int32>[time, batch] its row ids
    table, xs = _table_rows(recurrence.xs.table, recurrence.xs.ids)
    projected_table = _nan_last_row(_project_per_gate(gates, params, table, None,
                                                      one_matmul=True))
  else:  # input dropout masks each sequence's vectors before the projection
    xs = recurrence.inputs()

  def step(loop_params, carry, x_t, masks):
    params = _join_gates(loop_params)
    input_mask, recurrent_mask = masks
    xw_t = x_t if projected_table is not None else _project_per_gate(gates, params, x_t,
                                                                     input_mask)
    return gates.recurrence(params, carry, xw_t, _per_gate_matmuls(recurrent_mask))[0]

  return LoopBody(loop_params, xs, (input_mask, recurrence.recurrent_mask), step,
                  projected_table, recompute=num_gates > 1, join=_join_gates,
                  split=_split_like)


PER_GATE = Backend("per_gate", "the CPU's gate layout: one small matmul per gate inside the "
                   "loop, a recompute backward pass", cells=gated_cells, loop_body=loop_body)


def _per_gate_matmuls(mask):
  def matmuls(v, kernel, first_gate=0):
    n, mask_ = plain.gates_of(v, kernel, mask, first_gate)
    if n == 1:
      return [gate_matmul(v, kernel, mask_)]
    return gate_matmuls(v, kernel, mask_, n)
  return matmuls


def gate_matmul(v: Array, kernel: Array, mask: Optional[Array]) -> Array:
  """v @ kernel, with a dropout mask on v: none, shared [1, ..., n] or per gate [G, ..., n]."""
  if mask is None:
    return v @ kernel
  if mask.shape[0] == 1:
    return (v * mask[0]) @ kernel
  return jnp.concatenate(gate_matmuls(v, kernel, mask, mask.shape[0]), axis=-1)


def gate_matmuls(v: Array, kernel: Array, mask: Optional[Array], num_gates: int) -> list:
  """[v @ kernel_g for each gate g]: one <float32>[..., units] per gate, masked as
  `gate_matmul` (gate g sees v * mask[g], as Keras's implementation=1 does)."""
  if mask is None:
    return list(_split_matmul(v, kernel, num_gates))
  if mask.shape[0] == 1:
    return list(_split_matmul(v * mask[0], kernel, num_gates))
  kernels = jnp.split(kernel, num_gates, axis=-1)
  return [(v * m) @ k for m, k in zip(mask, kernels)]


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _split_matmul(v: Array, kernel: Array, num_gates: int) -> tuple:
  """(v @ kernel_g for each gate g), with a derivative that is cheaper to transpose: its
  tangent is one matmul per operand, d_v @ kernel + v @ d_kernel, split over gates, so
  that reverse mode computes each gradient as one matmul over the gates' joined
  cotangents [d_1 ... d_G] instead of G small ones."""
  return tuple(v @ k for k in jnp.split(kernel, num_gates, axis=-1))


@_split_matmul.defjvp
def _split_matmul_jvp(num_gates, primals, tangents):
  v, kernel = primals
  d_v, d_kernel = tangents
  outputs = _split_matmul(v, kernel, num_gates)
  d_outputs = tuple(jnp.split(d_v @ kernel + v @ d_kernel, num_gates, axis=-1))
  return outputs, d_outputs


def _project_per_gate(gates, params, x, mask, *, one_matmul=False):
  """x @ kernel + bias <[..., G*units]> as G per-gate matmuls whose bias is added per gate
  before the concatenation, so that XLA takes each slice of it for its operand.
  `one_matmul` (no mask): one matmul, for a projection outside the loop (a table of
  thousands of rows: half the time of G matmuls and their concatenation)."""
  kernel, bias = gates.input_projection(params)
  if one_matmul and mask is None:
    return plain.affine(x, kernel, bias)
  num_gates = gates.num_gates
  projected = gate_matmuls(x, kernel, mask, num_gates)
  if bias is not None:
    projected = [g + b for g, b in zip(projected, jnp.split(bias, num_gates, axis=-1))]
  return jnp.concatenate(projected, axis=-1)


def _table_rows(table: Array, ids: Array) -> tuple[Array, Array]:
  """(table with a zero row appended, ids with out-of-range ids sent to that row).

  Out-of-range ids must come out NaN, as `jnp.take(table, ids, axis=0)`'s do (negative
  ids count from the end): the row is set to NaN after the projection (`_nan_last_row`),
  so that the loop's gathers are in bounds (a bounds-checked gather per step costs more
  than the LSTM step's matmuls) and the row adds nothing to the kernel's gradient.
  """
  rows = table.shape[0]
  ids = jnp.where(ids < 0, ids + rows, ids)
  ids = jnp.where((ids < 0) | (ids >= rows), rows, ids)
  return jnp.concatenate([table, jnp.zeros_like(table[:1])]), ids


def _nan_last_row(table: Array) -> Array:
  return table.at[-1].set(jnp.nan)


class _Gates(tuple):
  """One parameter split over gates by `_split_gates`: a tuple of per-gate arrays."""


jax.tree_util.register_pytree_node(_Gates, lambda g: (tuple(g), None), lambda _, xs: _Gates(xs))


def _is_gates(a) -> bool:
  return isinstance(a, _Gates)


def _split_gates(params, num_gates: int, units: int):
  """Each parameter fused over gates ([..., G*units]) as a `_Gates` of per-gate arrays;
  `_join_gates` concatenates them again inside the loop, where XLA then reads the
  cell's per-gate slices as the arrays themselves."""
  def split(a):
    if num_gates > 1 and a.shape[-1] == num_gates * units:
      return _Gates(jnp.split(a, num_gates, axis=-1))
    return a
  return jax.tree_util.tree_map(split, params)


def _join_gates(loop_params):
  return jax.tree_util.tree_map(
      lambda a: jnp.concatenate(a, axis=-1) if _is_gates(a) else a, loop_params,
      is_leaf=_is_gates)


def _split_like(joined, loop_params):
  """`_join_gates`'s inverse: split each joined array as the loop's parameters are."""
  return jax.tree_util.tree_map(
      lambda like, a: _Gates(jnp.split(a, len(like), axis=-1)) if _is_gates(like) else a,
      loop_params, joined, is_leaf=_is_gates)
