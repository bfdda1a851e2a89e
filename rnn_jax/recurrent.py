"""The one unroll every cell goes through: `unroll(cell, params, inputs, ...)`.

With Keras's semantics: `lax.scan` over time (time-major inside), masking of padded
steps (a masked step keeps the carry and repeats the previous output), `go_backwards`,
variational dropout (Gal & Ghahramani: masks drawn once per sequence), an initial carry,
`return_sequences` and XLA's `unroll`. Any cell of the contract (`rnn_jax.cells`) runs
through it; the unroll reads nothing from its parameters.

How the loop is computed is one switch, `implementation=` (see `resolve_implementation`):

  "scan"       lax.scan over the cell's step, differentiated by autodiff: any cell; the
               portable path and the reference the others are tested against.
  "recompute"  the same loop with a backward pass that saves only the carries: any cell.
  "per_gate"   the CPU gate layout, for cells that declare one (`cells.Gates`).
  "fused"      the accelerator gate layout: input projection hoisted, fused matmuls.
  "associative"  for cells linear in their state (`cells.Linear`: minGRU, minLSTM): one
               input matmul, then the linear recurrence by a log-space associative scan.
  "linear_scan"  the same with a sequential scan of the linear map.
  "native"     a compiled CPU kernel for the whole layer, for the cells it knows (minGRU;
               `rnn_jax.cpu_kernels`), float32, where a C++ compiler built it.
  "parallel"   any cell, in parallel over time by Newton's method (`rnn_jax.parallel`:
               method="deer" | "quasi_deer" | "elk" | "quasi_elk"), falling back to the
               sequential result with a warning where it does not converge.
  "auto"       per_gate on CPU and fused on GPU/TPU for cells with a gate layout;
               for linear cells, native on CPU where built (float32), else linear_scan,
               and associative elsewhere; else scan.

The speed paths live in `rnn_jax._fast_paths`, which says why each is as it is.
"""
from __future__ import annotations

import contextlib
from typing import Any, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp

from rnn_jax import _fast_paths, cpu_kernels, linear_scan, parallel
from rnn_jax.cells.base import Gates, Linear

Array = jax.Array

IMPLEMENTATIONS = ("auto", "scan", "recompute", "per_gate", "fused", "associative",
                   "linear_scan", "native", "parallel")
_GATE_LAYOUTS = ("per_gate", "fused")
_LINEAR = ("associative", "linear_scan", "native")


def gates_of(cell) -> Optional[Gates]:
  """The cell's declared gate layout, or None."""
  gates = getattr(cell, "gates", None)
  return gates if isinstance(gates, Gates) else None


def linear_of(cell) -> Optional[Linear]:
  """The cell's declared linear form, or None."""
  linear = getattr(cell, "linear", None)
  return linear if isinstance(linear, Linear) else None


def resolve_implementation(cell, implementation: str = "auto") -> str:
  """The implementation `unroll` uses for `cell`: `implementation` itself, or for "auto"
  the platform's fast path for what the cell declares (a gate layout: per_gate on CPU,
  fused elsewhere; a linear form: linear_scan on CPU, associative elsewhere), and the
  portable "scan" where it declares neither."""
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"implementation={implementation!r} is not one of {IMPLEMENTATIONS}")
  cpu = jax.default_backend() == "cpu"
  if implementation == "auto":
    if gates_of(cell) is not None:
      return "per_gate" if cpu else "fused"
    if linear_of(cell) is not None:
      # On CPU the native kernel, else one matmul for the whole sequence and a loop of
      # multiply-adds; the associative scan's O(T log T) work is not (docs/performance.md).
      if cpu and cpu_kernels.supports(cell) and cpu_kernels.available():
        return "native"
      return "linear_scan" if cpu else "associative"
    return "scan"
  if implementation in _GATE_LAYOUTS and gates_of(cell) is None:
    raise ValueError(f"implementation={implementation!r} needs a cell that declares its gate "
                     f"layout (cells.Gates); {type(cell).__name__} does not: use 'scan' or "
                     "'recompute'")
  if implementation == "native" and not cpu_kernels.supports(cell):
    raise ValueError(f"implementation='native': no native kernel computes "
                     f"{getattr(cell, 'name', type(cell).__name__)} (only "
                     f"{', '.join(cpu_kernels.KERNEL_CELLS)}): use 'linear_scan' or 'scan'")
  if implementation in _LINEAR and linear_of(cell) is None:
    raise ValueError(f"implementation={implementation!r} needs a cell linear in its state "
                     f"(cells.Linear); {type(cell).__name__} is not: use 'scan' or "
                     "'recompute'")
  return implementation


_batch_shard_axis: list[str] = []  # the innermost `batch_shards` axis name, while tracing


@contextlib.contextmanager
def batch_shards(axis_name: str):
  """While tracing, code runs on one shard of a batch split over the mesh axis `axis_name`
  (inside `shard_map`): dropout masks are then drawn for the whole batch and sliced, so
  that every shard gets the rows one device would have drawn for it, and a run's numbers
  do not depend on how many devices split its batches."""
  _batch_shard_axis.append(axis_name)
  try:
    yield
  finally:
    _batch_shard_axis.pop()


def dropout_mask(key: Array, rate: float, shape, dtype=jnp.float32, batch_axis: int = 0) -> Array:
  """Inverted-dropout mask: 0 with probability `rate`, else 1 / (1 - rate).

  `shape[batch_axis]` is the batch: inside `batch_shards`, this shard's rows of the mask
  of the whole batch.
  """
  if _batch_shard_axis:
    axis_name = _batch_shard_axis[-1]
    rows = shape[batch_axis]
    whole = (*shape[:batch_axis], rows * jax.lax.axis_size(axis_name), *shape[batch_axis + 1:])
    keep = jax.lax.dynamic_slice_in_dim(jax.random.bernoulli(key, 1.0 - rate, whole),
                                        jax.lax.axis_index(axis_name) * rows, rows, batch_axis)
  else:
    keep = jax.random.bernoulli(key, 1.0 - rate, shape)
  return keep.astype(dtype) / jnp.asarray(1.0 - rate, dtype)




def sequence_dropout_masks(num_gates: Optional[int], key: Optional[Array], batch_shape,
                           input_size: int, units: int, dropout: float,
                           recurrent_dropout: float, training: bool, dtype=jnp.float32):
  """Masks for one sequence: (input_mask [n, *batch, features], recurrent_mask [G, *batch, units]).

  Keras 3 draws one mask per gate when recurrent dropout is on (implementation=1), and one
  shared input mask otherwise; either is None when its rate is 0 or outside training.
  `num_gates` is the cell's (None for a cell without a gate layout, which takes no
  recurrent dropout).
  """
  use_input = training and 0.0 < dropout < 1.0
  use_recurrent = training and 0.0 < recurrent_dropout < 1.0
  if not (use_input or use_recurrent):
    return None, None
  if key is None:
    raise ValueError("dropout in training needs a PRNG key: pass key=...")
  k_in, k_rec = jax.random.split(key)
  num_masks = num_gates if recurrent_dropout > 0 else 1
  input_mask = recurrent_mask = None
  if use_input:
    input_mask = dropout_mask(k_in, dropout, (num_masks, *batch_shape, input_size), dtype,
                              batch_axis=1)
  if use_recurrent:
    recurrent_mask = dropout_mask(k_rec, recurrent_dropout,
                                  (num_gates, *batch_shape, units), dtype, batch_axis=1)
  return input_mask, recurrent_mask


class Embedded(NamedTuple):
  """Inputs given as rows of a table, not yet looked up: inputs[b, t] = table[ids[b, t]].

  What an `Embedding` hands a recurrent layer (see `layers.Sequential`): the gate layouts
  then project the table through the cell's input kernel once, instead of every token at
  every step. The same values as `jnp.take(table, ids, axis=0)`.
  """
  table: Array  # <float32>[vocab, features]
  ids: Array    # <int32>[batch, time]

  @property
  def shape(self):
    return (*self.ids.shape, self.table.shape[-1])

  @property
  def dtype(self):
    return self.table.dtype

  def lookup(self) -> Array:
    return jnp.take(self.table, self.ids, axis=0)


def unroll(cell, params, inputs, *,
           units: Optional[int] = None,
           initial_carry: Any = None,
           mask: Optional[Array] = None,
           go_backwards: bool = False,
           return_sequences: bool = False,
           zero_output_for_mask: bool = False,
           dropout: float = 0.0,
           recurrent_dropout: float = 0.0,
           training: bool = False,
           key: Optional[Array] = None,
           unroll: int = 1,
           implementation: str = "auto",
           method: str = "deer") -> tuple[Array, Any]:
  """Runs `cell` over a batch of sequences.

  Args:
    cell: any cell: init, initial_carry and step (`rnn_jax.cells`).
    params: the cell's parameters.
    inputs: <float32>[batch, time, features], or `Embedded(table, ids)`.
    units: the cell's units, for its initial carry (and recurrent dropout); needed unless
      `initial_carry` is given.
    initial_carry: the cell's carry for the first step; `cell.initial_carry` by default.
    mask: <bool>[batch, time], False at padded steps. A masked step carries the state
      through unchanged and repeats the previous output (zeros with
      `zero_output_for_mask`, as Keras's Bidirectional asks of its layers).
    go_backwards: read the sequence from its last step; the sequence output stays in
      the order of processing (reversed), as in Keras.
    return_sequences: return every step's output, not only the last.
    dropout, recurrent_dropout: rates of the variational dropout on the inputs and on
      the recurrent state (the latter for cells with a gate layout: one mask per gate);
      active only with `training=True`, and then `key` is needed.
    unroll: how many steps `lax.scan` unrolls per loop iteration.
    implementation: "auto" | "scan" | "recompute" | "per_gate" | "fused" | "associative" |
      "linear_scan" | "native" | "parallel" (see the module docstring); the values are the same
      either way (to the Newton tolerance for "parallel").
    method: the Newton method of implementation="parallel".

  Returns:
    (outputs, final_carry): outputs <float32>[batch, time, units] with
    `return_sequences`, else <float32>[batch, units].
  """
  [result] = unroll_together([dict(
      cell=cell, params=params, inputs=inputs, units=units, initial_carry=initial_carry,
      mask=mask, go_backwards=go_backwards, return_sequences=return_sequences,
      zero_output_for_mask=zero_output_for_mask, dropout=dropout,
      recurrent_dropout=recurrent_dropout, training=training, key=key,
      implementation=implementation, method=method)], unroll=unroll)
  return result


def unroll_together(calls: Sequence[dict], *, unroll: int = 1) -> list[tuple[Array, Any]]:
  """[unroll(**kwargs) for kwargs in calls], as one loop over time.

  For independent recurrences over sequences of one length, such as the two directions
  of a Bidirectional layer: one loop instead of two halves the per-step overhead, and
  the two independent chains of small kernels in each step can run on two cores.
  """
  kinds = [resolve_implementation(kwargs["cell"], kwargs.get("implementation", "auto"))
           for kwargs in calls]
  apart = [kind in _LINEAR or kind == "parallel" for kind in kinds]
  if any(apart):  # no loop over time: each on its own, the rest in one loop
    looped = iter(unroll_together([k for k, a in zip(calls, apart) if not a], unroll=unroll)
                  if not all(apart) else [])
    return [(_linear_unroll if kind in _LINEAR else _parallel_unroll)(**kwargs) if a
            else next(looped) for kwargs, kind, a in zip(calls, kinds, apart)]
  calls = [{k: v for k, v in kwargs.items() if k != "method"} for kwargs in calls]
  loops = [_loop(**kwargs) for kwargs in calls]

  def step(params, carry, xs_t, consts):
    x_t, mask_t = xs_t
    outs = [loop.step(p, c, (x, m), k)
            for loop, p, c, x, m, k in zip(loops, params, carry, x_t, mask_t, consts)]
    return tuple(o[0] for o in outs), tuple(o[1] for o in outs)

  xs = (tuple(loop.xs[0] for loop in loops), tuple(loop.xs[1] for loop in loops))
  tables = tuple(loop.table for loop in loops)
  tables = None if all(t is None for t in tables) else tables
  params = tuple(loop.params for loop in loops)
  carry = tuple(loop.carry for loop in loops)
  consts = tuple(loop.consts for loop in loops)
  recompute = any(loop.recompute for loop in loops)
  if recompute or tables is not None:
    carry, ys = _fast_paths.scan(step, params, carry, xs, consts, tables,
                                 recompute=recompute, unroll=unroll)
  else:  # the portable path
    carry, ys = jax.lax.scan(lambda c, xs_t: step(params, c, xs_t, consts), carry, xs,
                             unroll=unroll)
  return [loop.finish(c, y) for loop, c, y in zip(loops, carry, ys)]


class _Loop(NamedTuple):
  """One call's part of the scan: step(params, carry, (x_t, mask_t), consts) -> (carry,
  y_t or None) over xs = (x, mask) time-major, and finish(carry, ys) -> (outputs,
  final_carry). See `_fast_paths.LoopBody` for params, consts, table and recompute."""
  step: Any
  params: Any
  carry: Any
  xs: tuple
  consts: Any
  finish: Any
  table: Optional[Array]
  recompute: bool


def _loop(cell, params, inputs, *, units=None, initial_carry=None, mask=None,
          go_backwards=False, return_sequences=False, zero_output_for_mask=False,
          dropout=0.0, recurrent_dropout=0.0, training=False, key=None,
          implementation="auto") -> _Loop:
  implementation = resolve_implementation(cell, implementation)
  gates = gates_of(cell)
  batch, _, input_size = inputs.shape
  if initial_carry is None:
    if units is None:
      raise ValueError("unroll needs units= (or initial_carry=) to start the cell's carry")
    initial_carry = cell.initial_carry(batch, units, inputs.dtype)
  if recurrent_dropout and gates is None:
    if linear_of(cell) is not None:
      raise ValueError(f"recurrent_dropout: {type(cell).__name__} is linear in its state, "
                       "with no recurrent weights to drop")
    raise ValueError(f"recurrent_dropout needs a cell that declares its gate layout "
                     f"(cells.Gates); {type(cell).__name__} does not")
  if units is None and gates is not None:
    units = gates.output(initial_carry).shape[-1]
  input_mask, recurrent_mask = sequence_dropout_masks(
      gates and gates.num_gates, key, (batch,), input_size, units, dropout,
      recurrent_dropout, training, inputs.dtype)

  embedded = isinstance(inputs, Embedded)
  if gates is not None:
    body = _fast_paths.gated_body(
        implementation, gates, params, None if embedded else inputs,
        *((inputs.table, inputs.ids) if embedded else (None, None)), input_mask,
        recurrent_mask)
  else:
    body = _portable_body(cell, params, inputs.lookup() if embedded else inputs, input_mask,
                          implementation == "recompute")

  xs = body.xs
  step_mask = None if mask is None else jnp.swapaxes(mask, 0, 1)[..., None].astype(bool)
  if go_backwards:
    xs = xs[::-1]
    step_mask = None if step_mask is None else step_mask[::-1]
  # A cell that does not say which part of its carry is the output: the loop keeps the
  # last output beside the carry, to repeat it at masked steps and to return it.
  keeps_output = body.output is None
  carry = initial_carry
  if keeps_output:
    x_0 = jax.ShapeDtypeStruct((batch, input_size), inputs.dtype)
    y_shape = jax.eval_shape(cell.step, params, initial_carry, x_0)[1]
    carry = (initial_carry, jnp.zeros(y_shape.shape, y_shape.dtype))

  def step(loop_params, state, xs_t, consts):
    """(state, (x_t, mask_t)) -> (state, y_t or None)."""
    x_t, mask_t = xs_t
    carry, y_previous = state if keeps_output else (state, None)
    new_carry, y = body.step(loop_params, carry, x_t, consts)
    if mask_t is not None:  # a padded step keeps the carry and repeats the output (or 0)
      new_carry = jax.tree_util.tree_map(lambda n, o: jnp.where(mask_t, n, o), new_carry, carry)
      y = jnp.where(mask_t, y, y_previous) if keeps_output else body.output(new_carry)
    new_state = (new_carry, y) if keeps_output else new_carry
    if mask_t is not None and zero_output_for_mask:
      y = jnp.where(mask_t, y, jnp.zeros_like(y))
    return new_state, (y if return_sequences else None)

  def finish(state, ys):
    carry, last = state if keeps_output else (state, body.output(state))
    if return_sequences:
      return jnp.swapaxes(ys, 0, 1), carry
    if step_mask is not None and zero_output_for_mask:
      last = jnp.where(step_mask[-1], last, jnp.zeros_like(last))
    return last, carry

  return _Loop(step, body.params, carry, (xs, step_mask), body.consts, finish, body.table,
               body.recompute)


def _portable_body(cell, params, x, input_mask, recompute: bool) -> _fast_paths.LoopBody:
  """A cell without a gate layout: its own step, the input dropout mask on x_t."""
  def step(params, carry, x_t, input_mask):
    return cell.step(params, carry, x_t if input_mask is None else x_t * input_mask[0])
  return _fast_paths.LoopBody(params, jnp.swapaxes(x, 0, 1), input_mask, step,
                              recompute=recompute)


def _whole_sequence_inputs(cell, inputs, units, initial_carry, dropout, training, key):
  """(x <[batch, time, features]> with the sequence's input dropout mask applied, the
  initial carry) for the unrolls that see the whole sequence at once."""
  x = inputs.lookup() if isinstance(inputs, Embedded) else inputs
  batch, _, input_size = x.shape
  if initial_carry is None:
    if units is None:
      raise ValueError("unroll needs units= (or initial_carry=) to start the cell's carry")
    initial_carry = cell.initial_carry(batch, units, x.dtype)
  input_mask, _ = sequence_dropout_masks(None, key, (batch,), input_size, units, dropout, 0.0,
                                         training, x.dtype)
  return (x if input_mask is None else x * input_mask[0][:, None, :]), initial_carry


def _linear_unroll(cell, params, inputs, *, units=None, initial_carry=None, mask=None,
                   go_backwards=False, return_sequences=False, zero_output_for_mask=False,
                   dropout=0.0, recurrent_dropout=0.0, training=False, key=None,
                   implementation="auto", method=None):
  """`unroll` of a cell linear in its state (`cells.Linear`): the coefficients of every
  step in one matmul, then h_t = a_t * h_{t-1} + b_t by `linear_scan.linear_recurrence`.
  A masked step keeps h (a = 1, b = 0), which is also its output."""
  implementation = resolve_implementation(cell, implementation)
  if recurrent_dropout:
    raise ValueError(f"recurrent_dropout: {type(cell).__name__} is linear in its state, with "
                     "no recurrent weights to drop")
  x, initial_carry = _whole_sequence_inputs(cell, inputs, units, initial_carry, dropout,
                                            training, key)
  if implementation == "native":
    if _native_usable(params, x, initial_carry):
      return _native_unroll(params, x, initial_carry, mask, go_backwards, return_sequences,
                            zero_output_for_mask)
    implementation = "linear_scan"
  # Time first from here: the coefficients of x_t alone take any leading axes, and the
  # loop then reads whole [batch, units] slices (docs/performance.md, minGRU's forms).
  x = jnp.swapaxes(x, 0, 1)
  mask = None if mask is None else jnp.swapaxes(mask, 0, 1).astype(bool)
  if go_backwards:
    x, mask = x[::-1], None if mask is None else mask[::-1]
  log_space = implementation == "associative"
  # One [time * batch, features] matrix: the coefficients of x_t alone take any leading
  # axes, and XLA's CPU code differentiates a 2-D matmul several times faster than one over
  # [time, batch, features] (docs/performance.md, "minGRU's whole-sequence form").
  time, batch = x.shape[:2]
  a, b = linear_of(cell).coefficients(params, x.reshape(time * batch, -1), log_space=log_space)
  a, b = a.reshape(time, batch, -1), b.reshape(time, batch, -1)
  hs = linear_scan.linear_recurrence(a, b, initial_carry, mask=mask, log_space=log_space,
                                     method="associative" if log_space else "sequential",
                                     time_major=True)
  final = hs[-1]
  if mask is not None:
    hs = _outputs_of_masked_steps(hs, mask, zero_output_for_mask, time_axis=0)
  return (jnp.swapaxes(hs, 0, 1) if return_sequences else hs[-1]), final


def _outputs_of_masked_steps(hs, mask, zero_output_for_mask, time_axis):
  """The outputs of the forms that compute states only: a masked step repeats the previous
  output, and before the first unmasked step that is Keras's zeros, not the initial carry
  (as the loop's outputs are); zeros at every masked step with `zero_output_for_mask`."""
  keep = (mask if zero_output_for_mask else jnp.cumsum(mask, axis=time_axis) > 0)[..., None]
  return jnp.where(keep, hs, jnp.zeros_like(hs))


def _native_usable(params, x, initial_carry) -> bool:
  """The kernel is float32 and CPU only, and may be unbuilt or turned off (for export):
  elsewhere "native" computes the same values by "linear_scan"."""
  return (jax.default_backend() == "cpu" and cpu_kernels.available()
          and all(a.dtype == jnp.float32 for a in jax.tree.leaves((params, x, initial_carry))))


def _native_unroll(params, x, initial_carry, mask, go_backwards, return_sequences,
                   zero_output_for_mask):
  """`_linear_unroll` by the native kernel: batch first throughout, as the layer's
  inputs and outputs are."""
  if go_backwards:
    x, mask = x[:, ::-1], None if mask is None else mask[:, ::-1]
  hs, final = cpu_kernels.min_gru_layer(params, x, initial_carry, mask,
                                        return_sequences=return_sequences)
  if mask is None:
    return (hs if return_sequences else final), final
  if return_sequences:
    return _outputs_of_masked_steps(hs, mask, zero_output_for_mask, time_axis=1), final
  # The last step's output, as `_outputs_of_masked_steps` gives it: zeros where that step
  # is masked (zero_output_for_mask) or where the row has no unmasked step at all.
  keep = mask[:, -1] if zero_output_for_mask else jnp.any(mask, axis=1)
  return jnp.where(keep[:, None], final, jnp.zeros_like(final)), final


def _parallel_unroll(cell, params, inputs, *, units=None, initial_carry=None, mask=None,
                     go_backwards=False, return_sequences=False, zero_output_for_mask=False,
                     dropout=0.0, recurrent_dropout=0.0, training=False, key=None,
                     implementation="parallel", method="deer"):
  """`unroll` by `parallel.evaluate`: the step sees (carry, previous output) and the
  padding mask as one more input column, so that a masked step keeps both."""
  if recurrent_dropout:
    raise ValueError("recurrent_dropout is not available with implementation='parallel'")
  x, initial_carry = _whole_sequence_inputs(cell, inputs, units, initial_carry, dropout,
                                            training, key)
  batch, time, input_size = x.shape
  keep = jnp.ones((batch, time), x.dtype) if mask is None else mask.astype(x.dtype)
  xs = jnp.swapaxes(jnp.concatenate([x, keep[..., None]], axis=-1), 0, 1)
  if go_backwards:
    xs = xs[::-1]
  y_shape = jax.eval_shape(cell.step, params, initial_carry,
                           jax.ShapeDtypeStruct((batch, input_size), x.dtype))[1]

  def step(params, state, x_t):
    carry, y_previous = state
    x_t, keep_t = x_t[..., :-1], x_t[..., -1:] > 0
    new_carry, y = cell.step(params, carry, x_t)
    new_carry = jax.tree_util.tree_map(lambda n, o: jnp.where(keep_t, n, o), new_carry, carry)
    y = jnp.where(keep_t, y, y_previous)
    return (new_carry, y), y

  solution = parallel.evaluate(step, params,
                               (initial_carry, jnp.zeros(y_shape.shape, y_shape.dtype)), xs,
                               method=method)
  carry, last = solution.final_carry
  step_mask = None if mask is None else jnp.swapaxes(keep, 0, 1)
  if step_mask is not None and go_backwards:
    step_mask = step_mask[::-1]
  if return_sequences:
    ys = solution.outputs
    if step_mask is not None and zero_output_for_mask:
      ys = jnp.where(step_mask[..., None] > 0, ys, jnp.zeros_like(ys))
    return jnp.swapaxes(ys, 0, 1), carry
  if step_mask is not None and zero_output_for_mask:
    last = jnp.where(step_mask[-1][:, None] > 0, last, jnp.zeros_like(last))
  return last, carry
