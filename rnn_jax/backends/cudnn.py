"""cuDNN's LSTM for rnn_jax's LSTM cell, through `jax.experimental.rnn`.

Three pure functions: `why_not` says whether cuDNN computes a cell exactly, `pack` lays
Keras's weights out as cuDNN's flat weight vector, and `lstm_layer` runs one layer in the
normal form the unroll hands a backend (time-major inputs, a [time, batch] mask, a
carry) with the unroll's semantics: a padded step keeps the carry.

cuDNN knows only right-padded rows (`seq_lengths`) and writes zeros past a row's length;
`lstm_layer` shifts every row whose real steps form one contiguous run (right-padded,
left-padded as after `go_backwards`, both, or empty) to start at step 0, and shifts the
outputs back, filling the padded steps with the kept carry. A mask of any other shape
goes to a caller's fallback, chosen on the mask's values at run time.

`jax.experimental.rnn.lstm` lowers on CUDA only; `reference_lstm` computes the same
function on any platform from `jax.experimental.rnn.lstm_ref`, and is what the tests use
on CPU to check the packing and the shifts.
"""
from __future__ import annotations

import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp
from jax.experimental import rnn

from rnn_jax import activations
from rnn_jax.backends.base import Backend
from rnn_jax.cells.base import GatedCell
from rnn_jax.cells.lstm import lstm as _lstm_cell

Array = jax.Array

# The recurrence of every cell `rnn_jax.cells.lstm` builds: its code object tells such a
# cell from another GatedCell that is merely named "lstm".
_LSTM_RECURRENCE_CODE = _lstm_cell().gates.recurrence.__code__


def _activation_name(activation) -> str:
  return activation if isinstance(activation, str) else getattr(
      activation, "__name__", repr(activation))


def why_not(cell, dtype, *, recurrent_dropout: bool) -> Optional[str]:
  """None where cuDNN's LSTM computes `cell` exactly, else why not, in a user's terms.

  Eligible: a cell built by `rnn_jax.cells.lstm` with activation "tanh" and
  recurrent_activation "sigmoid" (as names or as the functions `activations.get` gives
  for them), with or without bias, computing in float32, without recurrent dropout
  (cuDNN has no per-gate dropout of the recurrent state). Every reason that applies is
  given, joined by "; ".
  """
  name = getattr(cell, "name", None)
  if not isinstance(cell, GatedCell) or name != "lstm":
    what = f"a {name} cell" if isinstance(name, str) else f"a {type(cell).__name__} cell"
    return f"cuDNN computes rnn_jax's LSTM cell only; this layer has {what}"
  if getattr(cell.gates.recurrence, "__code__", None) is not _LSTM_RECURRENCE_CODE:
    return ("cuDNN computes rnn_jax's LSTM cell only; this cell is named 'lstm' but was "
            "not built by rnn_jax.cells.lstm")
  config = dict(cell.config)
  reasons = []
  for key, expected in (("activation", "tanh"), ("recurrent_activation", "sigmoid")):
    given = config.get(key, expected)
    if activations.get(given) is not activations.get(expected):
      reasons.append(f"cuDNN's LSTM computes tanh and sigmoid only; this LSTM has "
                     f"{key}={_activation_name(given)!r}")
  if jnp.dtype(dtype) != jnp.float32:
    reasons.append(f"cuDNN's LSTM runs in float32 only; this layer computes in "
                   f"{jnp.dtype(dtype).name}")
  if recurrent_dropout:
    reasons.append("cuDNN's LSTM has no recurrent dropout (Keras's per-gate masks on the "
                   "state); this layer has recurrent_dropout > 0")
  return "; ".join(reasons) or None


def pack(params, input_size: int, units: int) -> Array:
  """Keras's LSTM params as the <float32>[n] weight vector of one layer, one direction of
  `jax.experimental.rnn.lstm`: W_ih <[4*units, input]> = kernel.T, W_hh <[4*units,
  units]> = recurrent_kernel.T, b_ih = bias (zeros without it), b_hh = zeros.

  cuDNN's gate order i, f, g, o is Keras's i, f, c, o, so no gate moves
  (`jax.experimental.rnn.swap_lstm_gates` is for MIOpen's i, f, o, g). Differentiable:
  the gradient of the vector flows back to `params`.
  """
  kernel, recurrent_kernel = params["kernel"], params["recurrent_kernel"]
  if kernel.shape != (input_size, 4 * units) or recurrent_kernel.shape != (units, 4 * units):
    raise ValueError(f"pack: kernel {kernel.shape} and recurrent_kernel "
                     f"{recurrent_kernel.shape} are not an LSTM's of input {input_size}, "
                     f"units {units}: expected {(input_size, 4 * units)} and "
                     f"{(units, 4 * units)}")
  bias = params.get("bias")
  if bias is None:
    bias = jnp.zeros((4 * units,), jnp.float32)
  parts = (kernel.T, recurrent_kernel.T, bias, jnp.zeros((4 * units,), jnp.float32))
  return jnp.concatenate([jnp.ravel(p).astype(jnp.float32) for p in parts])


def reference_lstm(x: Array, h_0: Array, c_0: Array, weights: Array, seq_lengths: Array,
                   input_size: int, hidden_size: int, num_layers: int, dropout: float,
                   bidirectional: bool, precision=None) -> tuple[Array, Array, Array]:
  """`jax.experimental.rnn.lstm` on any platform: the CPU reference the tests use to check
  `pack` and `lstm_layer`, with the same signature and the same flat weights.

  `lstm_ref` takes the final carry at step seq_lengths - 1, which for a row of length 0
  is the carry after the last (padded) step; here such a row keeps h_0, c_0, as the
  unroll does. `precision` is accepted and ignored (float32 throughout).
  """
  del precision
  w_ih, w_hh, b_ih, b_hh = rnn.unpack_lstm_weights(weights, input_size, hidden_size,
                                                   num_layers, bidirectional)
  y, h_n, c_n = rnn.lstm_ref(x, h_0, c_0, w_ih, w_hh, b_ih, b_hh, seq_lengths, input_size,
                             hidden_size, num_layers, dropout, bidirectional)
  empty = (seq_lengths == 0)[None, :, None]
  return y, jnp.where(empty, h_0, h_n), jnp.where(empty, c_0, c_n)


def lstm_layer(params, xs: Array, mask: Optional[Array], carry: tuple[Array, Array], *,
               lstm: Optional[Callable] = None,
               fallback: Optional[Callable[[], tuple]] = None) -> tuple[Array, tuple]:
  """One LSTM layer by cuDNN, with the unroll's semantics.

  Args:
    params: Keras's LSTM params (kernel, recurrent_kernel, bias or none), float32.
    xs: <float32>[time, batch, features], time-major, input dropout already applied.
    mask: <bool>[time, batch], False at padded steps, or None (no padding).
    carry: (h0, c0), each <float32>[batch, units].
    lstm: the function computing the layer, with the signature of
      `jax.experimental.rnn.lstm` (the default; CUDA only); `reference_lstm` elsewhere.
    fallback: a zero-argument callable giving the same (hs, (h, c)) by another path, with
      the same shapes and dtypes, for a mask cuDNN cannot take (below).

  Returns:
    (hs <float32>[time, batch, units], (h, c)): hs[t] the h of the carry after step t,
    where a padded step keeps the carry (so hs[t] is h0 before a row's first real step
    and repeats the last real step's h after it), and (h, c) the carry after the last step.

  The mask of each row must be one contiguous run of real steps (right-padded,
  left-padded, both, or no real step at all); this is checked on its values at run
  time, and any other mask takes `fallback()` instead, through `lax.cond`. Without a
  fallback such a mask is the caller's error: the rows that are not one run come back
  as NaN (hs and both carries).

  cuDNN runs with TF32 off (precision HIGHEST), so that it computes in float32 as the
  other paths do.
  """
  lstm = rnn.lstm if lstm is None else lstm
  h0, c0 = carry
  time, batch, features = xs.shape
  units = h0.shape[-1]
  weights = pack(params, features, units)

  def run(x, lengths):
    """cuDNN on time-major x <[time, batch, features]>, rows right-padded to `lengths`."""
    y, h_n, c_n = lstm(jnp.swapaxes(x, 0, 1), h0[None], c0[None], weights, lengths,
                       input_size=features, hidden_size=units, num_layers=1, dropout=0.0,
                       bidirectional=False, precision=jax.lax.Precision.HIGHEST)
    return jnp.swapaxes(y, 0, 1), (h_n[0], c_n[0])

  if time == 0:
    return jnp.zeros((0, batch, units), xs.dtype), (h0, c0)
  if mask is None:
    return run(xs, jnp.full((batch,), time, jnp.int32))

  mask = mask.astype(bool)
  t = jnp.arange(time, dtype=jnp.int32)[:, None]
  lengths = jnp.sum(mask, axis=0, dtype=jnp.int32)
  start = jnp.argmax(mask, axis=0).astype(jnp.int32)  # the first real step; 0 if none
  end = start + lengths
  in_run = (t >= start) & (t < end)
  row_is_run = jnp.all(mask == in_run, axis=0)

  def shifted():
    # Each row's run moved to start at step 0, zeros after it: cuDNN reads no padded
    # step, and whatever its gradient holds there does not reach xs.
    x = jnp.take_along_axis(xs, jnp.minimum(t + start, time - 1)[..., None], axis=0)
    x = jnp.where((t < lengths)[..., None], x, jnp.zeros_like(x))
    # A row of no real step runs one step on zeros (whether cuDNN takes a length of 0 is
    # not documented) and keeps its carry below.
    y, (h, c) = run(x, jnp.maximum(lengths, 1))
    has_steps = (lengths > 0)[:, None]
    h, c = jnp.where(has_steps, h, h0), jnp.where(has_steps, c, c0)
    y = jnp.take_along_axis(y, jnp.clip(t - start, 0, time - 1)[..., None], axis=0)
    kept = jnp.where((t < start)[..., None], h0[None], h[None])
    return jnp.where(in_run[..., None], y, kept), (h, c)

  if fallback is not None:
    return jax.lax.cond(jnp.all(row_is_run), shifted, fallback)
  hs, (h, c) = shifted()
  bad = ~row_is_run[:, None]
  nan = jnp.full_like(h, jnp.nan)
  return (jnp.where(bad[None], nan[None], hs),
          (jnp.where(bad, nan, h), jnp.where(bad, nan, c)))


# ----------------------------------------------------------------------------- backend

def _cells(cell) -> Optional[str]:
  return why_not(cell, jnp.float32, recurrent_dropout=False)


def _run(recurrence, *, lstm: Optional[Callable] = None):
  """A `Recurrence` by `lstm_layer`, a mask cuDNN cannot take by the "fused" loop."""
  from rnn_jax.backends import fused, loop  # pylint: disable=import-outside-toplevel
  every_step = recurrence._replace(return_sequences=True)
  fallback = lambda: tuple(loop.run([every_step], [fused.loop_body(every_step)])[0])
  hs, carry = lstm_layer(recurrence.params, recurrence.dropped_inputs(), recurrence.mask,
                         recurrence.initial_state, lstm=lstm, fallback=fallback)
  return (hs if recurrence.return_sequences else None), carry


def backend(name: str = "cudnn", *, lstm: Optional[Callable] = None,
            platforms: Optional[tuple] = ("gpu",)) -> Backend:
  """The cuDNN backend; `lstm=reference_lstm, platforms=None` gives the same backend on
  any platform through `jax.experimental.rnn.lstm_ref`, which the tests use on CPU."""
  return Backend(name, "cuDNN's LSTM (jax.experimental.rnn) for LSTMs it computes exactly",
                 cells=_cells, platforms=platforms, dtypes=("float32",),
                 features=frozenset({"mask", "input_dropout"}),
                 run=functools.partial(_run, lstm=lstm))


CUDNN = backend()
