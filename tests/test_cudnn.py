"""rnn_jax.backends.cudnn on CPU: the packing and the shifts checked through
`reference_lstm` (jax.experimental.rnn.lstm_ref on cuDNN's flat weights) against a plain
scan over the cell's step and against `recurrent.unroll`, values and gradients."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import rnn

from helpers import assert_trees_close
from rnn_jax import cells, recurrent
from rnn_jax.backends import cudnn

TIME, BATCH, FEATURES, UNITS = 7, 5, 3, 4


def _runs_mask(runs):
  """<bool>[time, batch] whose row b is real on steps [start, end) of runs[b]."""
  mask = np.zeros((TIME, BATCH), bool)
  for b, (start, end) in enumerate(runs):
    mask[start:end, b] = True
  return jnp.asarray(mask)


# Right-padded rows of lengths 7 (full), 4, 0 (all padded), 1, 6.
RIGHT = _runs_mask([(0, 7), (0, 4), (0, 0), (0, 1), (0, 6)])
# Padded at both ends, and one row with no real step.
BOTH = _runs_mask([(1, 5), (0, 7), (3, 3), (6, 7), (2, 4)])
# Rows 1 and 4 are not one run: RIGHT with a hole in each.
HOLES = RIGHT.at[2, 1].set(False).at[3, 4].set(False)
MASKS = {"none": None, "right": RIGHT, "left": RIGHT[::-1], "both": BOTH}


def _lstm(seed=0, use_bias=True):
  """An LSTM cell and params with a random bias (so that every bias entry matters)."""
  cell = cells.lstm(use_bias=use_bias)
  k_init, k_bias = jax.random.split(jax.random.PRNGKey(seed))
  params = cell.init(k_init, FEATURES, UNITS)
  if use_bias:
    params["bias"] = 0.5 * jax.random.normal(k_bias, (4 * UNITS,))
  return cell, params


def _inputs(seed=1):
  """(xs <[time, batch, features]>, a nonzero carry (h0, c0))."""
  k_x, k_h, k_c = jax.random.split(jax.random.PRNGKey(seed), 3)
  xs = jax.random.normal(k_x, (TIME, BATCH, FEATURES))
  return xs, (jax.random.normal(k_h, (BATCH, UNITS)), jax.random.normal(k_c, (BATCH, UNITS)))


def _scan(cell, params, xs, mask, carry):
  """The semantics, written out: lax.scan over cell.step, a padded step keeps the carry;
  (hs <[time, batch, units]> the h of every step's carry, final carry)."""
  if mask is None:
    mask = jnp.ones(xs.shape[:2], bool)

  def step(carry, inputs):
    x_t, m_t = inputs
    new_carry, _ = cell.step(params, carry, x_t)
    new_carry = jax.tree.map(lambda n, o: jnp.where(m_t[:, None], n, o), new_carry, carry)
    return new_carry, new_carry[0]

  carry, hs = jax.lax.scan(step, carry, (xs, mask))
  return hs, carry


def _ours(params, xs, mask, carry, **kwargs):
  return cudnn.lstm_layer(params, xs, mask, carry, lstm=cudnn.reference_lstm, **kwargs)


def _loss(outputs):
  """A scalar that every output, h and c enter with different weights."""
  hs, (h, c) = outputs
  return jnp.sum(jnp.sin(hs * jnp.arange(1, hs.shape[-1] + 1))) + jnp.sum(jnp.cos(h)) + \
      jnp.sum(jnp.sin(2.0 * c))


def _check_values_and_gradients(ours, reference, *args):
  """ours and reference agree in outputs, and in the gradients of `_loss` wrt every arg."""
  assert_trees_close(ours(*args), reference(*args))
  argnums = tuple(range(len(args)))
  assert_trees_close(jax.value_and_grad(lambda *a: _loss(ours(*a)), argnums)(*args),
                jax.value_and_grad(lambda *a: _loss(reference(*a)), argnums)(*args))


# ------------------------------------------------------------------------------ pack

@pytest.mark.parametrize("use_bias", [True, False])
def test_pack_is_cudnns_layout_of_kerass_weights(use_bias):
  _, params = _lstm(use_bias=use_bias)
  weights = cudnn.pack(params, FEATURES, UNITS)
  assert weights.shape == (rnn.get_num_params_in_lstm(FEATURES, UNITS, 1, False),)
  assert weights.dtype == jnp.float32
  w_ih, w_hh, b_ih, b_hh = rnn.unpack_lstm_weights(weights, FEATURES, UNITS, 1, False)
  np.testing.assert_array_equal(w_ih[0], params["kernel"].T)
  np.testing.assert_array_equal(w_hh[0], params["recurrent_kernel"].T)
  np.testing.assert_array_equal(b_ih[0], params["bias"] if use_bias else np.zeros(4 * UNITS))
  np.testing.assert_array_equal(b_hh[0], np.zeros(4 * UNITS))


def test_pack_refuses_weights_of_other_sizes():
  _, params = _lstm()
  with pytest.raises(ValueError, match="not an LSTM's of input 4, units 4"):
    cudnn.pack(params, FEATURES + 1, UNITS)


def test_reference_lstm_takes_ragged_lengths_and_empty_rows():
  """Right-padded rows of lengths 7, 4, 0, 1, 6 through `reference_lstm` directly: the
  outputs are the scan's up to each length and zeros after, the final carry is the one at
  the row's last real step, and h0, c0 for the empty row (where lstm_ref alone gives the
  carry after the last padded step)."""
  cell, params = _lstm()
  xs, (h0, c0) = _inputs()
  lengths = jnp.sum(RIGHT, axis=0, dtype=jnp.int32)
  y, h_n, c_n = cudnn.reference_lstm(
      jnp.swapaxes(xs, 0, 1), h0[None], c0[None], cudnn.pack(params, FEATURES, UNITS),
      lengths, FEATURES, UNITS, 1, 0.0, False)
  hs, (h, c) = _scan(cell, params, xs, RIGHT, (h0, c0))
  assert_trees_close(jnp.swapaxes(y, 0, 1), jnp.where(RIGHT[..., None], hs, 0.0))
  assert_trees_close((h_n[0], c_n[0]), (h, c))
  np.testing.assert_array_equal(h_n[0, 2], h0[2])


# ------------------------------------------------------------------ the layer's values

@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("padding", sorted(MASKS))
def test_layer_equals_a_plain_scan(padding, use_bias):
  cell, params = _lstm(use_bias=use_bias)
  xs, carry = _inputs()
  mask = MASKS[padding]
  _check_values_and_gradients(lambda p, x, c: _ours(p, x, mask, c),
                              lambda p, x, c: _scan(cell, p, x, mask, c), params, xs, carry)


def test_padded_steps_keep_the_carry():
  """The semantics spelled out on `BOTH`: h0 before a row's run, the run's last h after
  it, and h0, c0 throughout the row with no real step."""
  _, params = _lstm()
  xs, (h0, c0) = _inputs()
  hs, (h, c) = _ours(params, xs, BOTH, (h0, c0))
  np.testing.assert_array_equal(hs[0, 0], h0[0])      # row 0 starts at step 1
  np.testing.assert_array_equal(hs[5:, 0], jnp.broadcast_to(hs[4, 0], (2, UNITS)))
  np.testing.assert_array_equal(hs[5:, 0], jnp.broadcast_to(h[0], (2, UNITS)))
  np.testing.assert_array_equal(hs[:, 2], jnp.broadcast_to(h0[2], (TIME, UNITS)))
  np.testing.assert_array_equal((h[2], c[2]), (h0[2], c0[2]))
  assert not np.allclose(hs[1, 0], h0[0])             # the run itself moves


@pytest.mark.parametrize("padding", ["none", "right", "go_backwards", "both"])
def test_layer_equals_the_unroll(padding):
  """Against `recurrent.unroll(implementation="scan")` on batch-first inputs, go_backwards
  as the unroll does it (time reversed before the layer): the outputs from each row's
  first real step on (before it, the unroll's outputs are not the carry's in every
  implementation) and the final carry, values and gradients."""
  cell, params = _lstm()
  xs, carry = _inputs()
  x = jnp.swapaxes(xs, 0, 1)
  go_backwards = padding == "go_backwards"
  mask = {"none": None, "right": RIGHT, "go_backwards": RIGHT, "both": BOTH}[padding]
  processed = jnp.ones((TIME, BATCH), bool) if mask is None else (
      mask[::-1] if go_backwards else mask)
  started = (jnp.cumsum(processed, axis=0) > 0)[..., None]

  def comparable(outputs_time_major, carry):
    return jnp.where(started, outputs_time_major, 0.0), carry

  def ours(p, x, c):
    xs, m = jnp.swapaxes(x, 0, 1), None if mask is None else mask
    if go_backwards:
      xs, m = xs[::-1], m[::-1]
    return comparable(*_ours(p, xs, m, c))

  def unrolled(p, x, c):
    ys, carry = recurrent.unroll(cell, p, x, units=UNITS, initial_carry=c,
                                 mask=None if mask is None else jnp.swapaxes(mask, 0, 1),
                                 go_backwards=go_backwards, return_sequences=True,
                                 implementation="scan")
    return comparable(jnp.swapaxes(ys, 0, 1), carry)

  _check_values_and_gradients(ours, unrolled, params, x, carry)


def test_bidirectional_pair_equals_two_unrolls():
  """A forward layer and a go_backwards copy with its own params over the same
  right-padded inputs, as Keras's Bidirectional runs them: both outputs (time-aligned and
  concatenated) and both carries, gradients wrt both params, the inputs and the carries."""
  cell, forward = _lstm(seed=0)
  _, backward = _lstm(seed=2)
  xs, carry = _inputs()
  _, carry_b = _inputs(seed=3)
  x = jnp.swapaxes(xs, 0, 1)
  started_f = (jnp.cumsum(RIGHT, axis=0) > 0)[..., None]
  started_b = (jnp.cumsum(RIGHT[::-1], axis=0) > 0)[..., None]

  def merged(hs_f, hs_b, carry_f, carry_b):
    outputs = jnp.concatenate([jnp.where(started_f, hs_f, 0.0),
                               jnp.where(started_b, hs_b, 0.0)[::-1]], axis=-1)
    return outputs, (carry_f, carry_b)

  def ours(p_f, p_b, x, c_f, c_b):
    xs = jnp.swapaxes(x, 0, 1)
    hs_f, out_f = _ours(p_f, xs, RIGHT, c_f)
    hs_b, out_b = _ours(p_b, xs[::-1], RIGHT[::-1], c_b)
    return merged(hs_f, hs_b, out_f, out_b)

  def unrolled(p_f, p_b, x, c_f, c_b):
    common = dict(units=UNITS, mask=jnp.swapaxes(RIGHT, 0, 1), return_sequences=True,
                  implementation="scan")
    ys_f, out_f = recurrent.unroll(cell, p_f, x, initial_carry=c_f, **common)
    ys_b, out_b = recurrent.unroll(cell, p_b, x, initial_carry=c_b, go_backwards=True,
                                   **common)
    return merged(jnp.swapaxes(ys_f, 0, 1), jnp.swapaxes(ys_b, 0, 1), out_f, out_b)

  def loss(outputs):
    ys, (carry_f, carry_b) = outputs
    return _loss((ys, carry_f)) + 3.0 * _loss((ys[..., :1], carry_b))

  args = (forward, backward, x, carry, carry_b)
  assert_trees_close(ours(*args), unrolled(*args))
  argnums = tuple(range(len(args)))
  assert_trees_close(jax.value_and_grad(lambda *a: loss(ours(*a)), argnums)(*args),
                jax.value_and_grad(lambda *a: loss(unrolled(*a)), argnums)(*args))


def test_cudnn_sees_right_padded_rows_of_the_runs_lengths():
  """What `lstm` is handed for `BOTH`: each run moved to step 0, zeros after it, lengths
  the runs' (1 for the empty row, whose result is not used), TF32 off."""
  _, params = _lstm()
  xs, carry = _inputs()
  seen = {}

  def spy(x, *args, **kwargs):
    seen.update(x=x, seq_lengths=args[3], precision=kwargs["precision"])
    return cudnn.reference_lstm(x, *args, **kwargs)

  cudnn.lstm_layer(params, xs, BOTH, carry, lstm=spy)
  np.testing.assert_array_equal(seen["seq_lengths"], [4, 7, 1, 1, 2])
  assert seen["seq_lengths"].dtype == jnp.int32
  assert seen["precision"] == jax.lax.Precision.HIGHEST
  for b, (start, end) in enumerate([(1, 5), (0, 7), (3, 3), (6, 7), (2, 4)]):
    np.testing.assert_array_equal(seen["x"][b, :end - start], xs[start:end, b])
    np.testing.assert_array_equal(seen["x"][b, end - start:], 0.0)


# ----------------------------------------------------------------------- the fallback

def test_a_mask_with_holes_takes_the_fallback():
  cell, params = _lstm()
  xs, carry = _inputs()

  def ours(p, x, c):
    return _ours(p, x, HOLES, c, fallback=lambda: _scan(cell, p, x, HOLES, c))

  _check_values_and_gradients(ours, lambda p, x, c: _scan(cell, p, x, HOLES, c),
                              params, xs, carry)


def test_the_fallback_is_chosen_on_the_masks_values():
  """One compiled function, two masks: the sentinel comes back for the mask with holes
  only."""
  cell, params = _lstm()
  xs, carry = _inputs()

  def sentinel():
    return (jnp.full((TIME, BATCH, UNITS), 123.0),
            (jnp.full((BATCH, UNITS), 124.0), jnp.full((BATCH, UNITS), 125.0)))

  layer = jax.jit(lambda mask: _ours(params, xs, mask, carry, fallback=sentinel))
  hs, (h, c) = layer(HOLES)
  np.testing.assert_array_equal(hs, 123.0)
  np.testing.assert_array_equal((h, c), (np.full((BATCH, UNITS), 124.0),
                                         np.full((BATCH, UNITS), 125.0)))
  for mask in (RIGHT, RIGHT[::-1], BOTH):
    assert_trees_close(layer(mask), _scan(cell, params, xs, mask, carry))


def test_without_a_fallback_rows_with_holes_are_nan():
  cell, params = _lstm()
  xs, carry = _inputs()
  hs, (h, c) = _ours(params, xs, HOLES, carry)
  bad = np.array([False, True, False, False, True])
  for value in (hs[:, bad], h[bad], c[bad]):
    assert np.all(np.isnan(value))
  ref_hs, (ref_h, ref_c) = _scan(cell, params, xs, HOLES, carry)
  assert_trees_close((hs[:, ~bad], h[~bad], c[~bad]), (ref_hs[:, ~bad], ref_h[~bad], ref_c[~bad]))


# -------------------------------------------------------------------------- why_not

@pytest.mark.parametrize("kwargs", [{}, {"use_bias": False}, {"unit_forget_bias": False},
                                    {"activation": jnp.tanh,
                                     "recurrent_activation": jax.nn.sigmoid}])
def test_kerass_default_lstm_is_eligible(kwargs):
  assert cudnn.why_not(cells.lstm(**kwargs), jnp.float32, recurrent_dropout=False) is None
  assert cudnn.why_not(cells.lstm(**kwargs), "float32", recurrent_dropout=False) is None


class _UserCell:
  def init(self, key, input_size, units):
    return {"kernel": jnp.zeros((input_size, units))}

  def initial_carry(self, batch_size, units, dtype=jnp.float32):
    return jnp.zeros((batch_size, units), dtype)

  def step(self, params, carry, x_t):
    h = jnp.tanh(x_t @ params["kernel"] + carry)
    return h, h


def _named_lstm_impostor():
  real = cells.lstm()
  gates = real.gates._replace(recurrence=lambda params, carry, xw_t, matmuls: (carry, carry[0]))
  return real._replace(gates=gates)


@pytest.mark.parametrize("cell, dtype, recurrent_dropout, cause", [
    (cells.lstm(activation="relu"), jnp.float32, False, "activation='relu'"),
    (cells.lstm(recurrent_activation="hard_sigmoid"), jnp.float32, False,
     "recurrent_activation='hard_sigmoid'"),
    (cells.lstm(activation=lambda x: x), jnp.float32, False, "activation='<lambda>'"),
    (cells.lstm(), jnp.bfloat16, False, "bfloat16"),
    (cells.lstm(), jnp.float16, False, "float16"),
    (cells.lstm(), jnp.float32, True, "recurrent_dropout"),
    (cells.gru(), jnp.float32, False, "a gru cell"),
    (_UserCell(), jnp.float32, False, "a _UserCell cell"),
    (_named_lstm_impostor(), jnp.float32, False, "not built by rnn_jax.cells.lstm"),
], ids=["relu", "hard_sigmoid", "lambda", "bfloat16", "float16", "recurrent_dropout", "gru",
        "user_cell", "impostor"])
def test_ineligible_cells_say_why(cell, dtype, recurrent_dropout, cause):
  reason = cudnn.why_not(cell, dtype, recurrent_dropout=recurrent_dropout)
  assert reason is not None and cause in reason, reason


def test_every_reason_is_given():
  reason = cudnn.why_not(cells.lstm(activation="relu"), jnp.bfloat16, recurrent_dropout=True)
  for cause in ("activation='relu'", "bfloat16", "recurrent_dropout"):
    assert cause in reason
