"""The one unroll mechanism: every cell, every layer goes through `unroll`.

It does, with Keras's semantics: the input projection of the whole sequence as one
matmul outside the loop, `lax.scan` over time (time-major inside), `go_backwards`,
masking of padded steps, variational dropout (Gal & Ghahramani: masks drawn once per
sequence), an initial carry, `return_sequences` and XLA's `unroll`.
"""
from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp

from rnn_jax.cells import Cell, Params

Array = jax.Array


def dropout_mask(key: Array, rate: float, shape, dtype=jnp.float32) -> Array:
  """Inverted-dropout mask: 0 with probability `rate`, else 1 / (1 - rate)."""
  keep = jax.random.bernoulli(key, 1.0 - rate, shape)
  return keep.astype(dtype) / jnp.asarray(1.0 - rate, dtype)


def sequence_dropout_masks(cell: Cell, key: Optional[Array], batch_shape, input_size: int,
                           units: int, dropout: float, recurrent_dropout: float,
                           training: bool, dtype=jnp.float32):
  """Masks for one sequence: (input_mask [n, *batch, features], recurrent_mask [G, *batch, units]).

  Keras 3 draws one mask per gate when recurrent dropout is on (implementation=1), and one
  shared input mask otherwise; either is None when its rate is 0 or outside training.
  """
  use_input = training and 0.0 < dropout < 1.0
  use_recurrent = training and 0.0 < recurrent_dropout < 1.0
  if not (use_input or use_recurrent):
    return None, None
  if key is None:
    raise ValueError("dropout in training needs a PRNG key: pass key=...")
  k_in, k_rec = jax.random.split(key)
  num_masks = cell.num_gates if recurrent_dropout > 0 else 1
  input_mask = recurrent_mask = None
  if use_input:
    input_mask = dropout_mask(k_in, dropout, (num_masks, *batch_shape, input_size), dtype)
  if use_recurrent:
    recurrent_mask = dropout_mask(k_rec, recurrent_dropout,
                                  (cell.num_gates, *batch_shape, units), dtype)
  return input_mask, recurrent_mask


def unroll(cell: Cell, params: Params, inputs: Array, *,
           initial_carry: Any = None,
           mask: Optional[Array] = None,
           go_backwards: bool = False,
           return_sequences: bool = False,
           zero_output_for_mask: bool = False,
           dropout: float = 0.0,
           recurrent_dropout: float = 0.0,
           training: bool = False,
           key: Optional[Array] = None,
           unroll: int = 1) -> tuple[Array, Any]:
  """Runs `cell` over a batch of sequences.

  Args:
    cell: a `rnn_jax.cells.Cell`.
    params: the cell's parameters.
    inputs: <float32>[batch, time, features].
    initial_carry: the cell's carry for the first step; zeros by default.
    mask: <bool>[batch, time], False at padded steps. A masked step carries the state
      through unchanged and repeats the previous output (zeros with
      `zero_output_for_mask`, as Keras's Bidirectional asks of its layers).
    go_backwards: read the sequence from its last step; the sequence output stays in
      the order of processing (reversed), as in Keras.
    return_sequences: return every step's output, not only the last.
    dropout, recurrent_dropout: rates of the variational dropout on the inputs and on
      the recurrent state; active only with `training=True`, and then `key` is needed.
    unroll: how many steps `lax.scan` unrolls per loop iteration.

  Returns:
    (outputs, final_carry): outputs <float32>[batch, time, units] with
    `return_sequences`, else <float32>[batch, units].
  """
  batch, _, input_size = inputs.shape
  units = params["recurrent_kernel"].shape[0]
  carry = cell.initial_carry(batch, units, inputs.dtype) if initial_carry is None else initial_carry
  input_mask, recurrent_mask = sequence_dropout_masks(
      cell, key, (batch,), input_size, units, dropout, recurrent_dropout, training,
      inputs.dtype)
  if input_mask is not None:
    input_mask = input_mask[:, :, None, :]  # broadcast over time

  # One matmul for every step's input projection; the loop only does the recurrence.
  projected = jnp.swapaxes(cell.project(params, inputs, input_mask), 0, 1)  # [time, batch, G*units]
  step_mask = None if mask is None else jnp.swapaxes(mask, 0, 1)[..., None].astype(bool)
  if go_backwards:
    projected = projected[::-1]
    step_mask = None if step_mask is None else step_mask[::-1]

  def body(carry, xs):
    projected_t, mask_t = xs
    new_carry, y = cell.recurrent(params, carry, projected_t, recurrent_mask)
    if mask_t is not None:
      new_carry = jax.tree_util.tree_map(lambda n, o: jnp.where(mask_t, n, o), new_carry, carry)
      y = cell.hidden(new_carry)  # the new output, or the previous one at a masked step
      if zero_output_for_mask:
        y = jnp.where(mask_t, y, jnp.zeros_like(y))
    return new_carry, (y if return_sequences else None)

  carry, ys = jax.lax.scan(body, carry, (projected, step_mask), unroll=unroll)
  if return_sequences:
    return jnp.swapaxes(ys, 0, 1), carry
  last = cell.hidden(carry)
  if step_mask is not None and zero_output_for_mask:
    last = jnp.where(step_mask[-1], last, jnp.zeros_like(last))
  return last, carry
