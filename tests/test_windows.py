"""The window sampler against a plain transcription of the lecture's `generator`."""
import gc

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from benchmarks.lecture_generator import lecture_generator
from rnn_jax.data import windows
from rnn_jax.errors import UserError


def _data(rows, features=3, seed=0):
  return np.random.default_rng(seed).normal(size=(rows, features)).astype(np.float32)


def _batches(data, **kw):
  defaults = dict(target_index=1, train_end=200, val_end=300, lookback=24, step=3, delay=6,
                  batch_size=8, steps_per_epoch=5)
  defaults.update(kw)
  return windows.WindowBatches.from_split(data, **defaults)


def _check_same(ours, theirs, n):
  for (x, y, w), (samples, targets) in zip(ours, theirs):
    real = w > 0
    np.testing.assert_array_equal(x[real], samples.astype(np.float32))
    np.testing.assert_array_equal(y[real, 0], targets.astype(np.float32))
    n -= 1
  assert n == 0


def test_train_batches_are_the_lecture_generator_with_the_same_draws():
  data = _data(400)
  batches = _batches(data)
  theirs = lecture_generator(data, 24, 6, 0, 200, shuffle=True, batch_size=8, step=3,
                             rng=np.random.default_rng([7, 2]))
  _check_same(batches.train(seed=7, epoch=2), theirs, 5)


def test_val_and_test_walk_rows_in_order_as_the_lecture_with_its_step_counts():
  data = _data(400)
  batches = _batches(data)
  assert batches.val_steps == (300 - 201 - 24) // 8
  assert batches.test_steps == (400 - 301 - 24) // 8
  _check_same(batches.val(), lecture_generator(data, 24, 6, 201, 300, batch_size=8,
                                               step=3), batches.val_steps)
  _check_same(batches.test(), lecture_generator(data, 24, 6, 301, None, batch_size=8,
                                                step=3), batches.test_steps)


def test_ordered_walk_restarts_as_the_lecture_past_one_pass():
  data = _data(400)
  batches = _batches(data, val_steps=25)  # three passes over the validation rows
  _check_same(batches.val(), lecture_generator(data, 24, 6, 201, 300, batch_size=8,
                                               step=3), 25)


def test_training_batches_depend_on_seed_and_epoch_only():
  batches = _batches(_data(400))
  first = [x for x, _, _ in batches.train(3, 1)]
  again = [x for x, _, _ in batches.train(3, 1)]
  other = [x for x, _, _ in batches.train(3, 2)]
  assert all(np.array_equal(a, b) for a, b in zip(first, again))
  assert not all(np.array_equal(a, b) for a, b in zip(first, other))


def test_reverse_flips_windows_along_time():
  data = _data(400)
  forward = next(_batches(data).val())
  backward = next(_batches(data, reverse=True).val())
  np.testing.assert_array_equal(backward[0], forward[0][:, ::-1])
  np.testing.assert_array_equal(backward[1], forward[1])


def test_too_few_rows_is_a_user_error():
  with pytest.raises(UserError, match="too few"):
    _batches(_data(60), train_end=30, val_end=45)


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(60, 200), lookback=st.integers(1, 12), step=st.integers(1, 4),
       delay=st.integers(0, 6), batch_size=st.integers(1, 9), seed=st.integers(0, 2**31))
def test_property_every_window_is_its_rows_and_every_target_delay_ahead(
    rows, lookback, step, delay, batch_size, seed):
  data = np.arange(rows * 2, dtype=np.float32).reshape(rows, 2)  # row r holds 2r, 2r+1
  train_end, val_end = rows // 2, (3 * rows) // 4
  try:
    batches = windows.WindowBatches.from_split(
        data, 1, train_end=train_end, val_end=val_end, lookback=lookback, step=step,
        delay=delay, batch_size=batch_size, steps_per_epoch=2)
  except UserError:
    assert (val_end - train_end - 1 - lookback) // batch_size < 1 or train_end <= lookback
    return
  parts = [(batches.train(seed, 0), batches.train_bounds), (batches.val(), batches.val_bounds),
           (batches.test(), batches.test_bounds)]
  for iterator, bounds in parts:
    for x, y, w in iterator:
      assert x.shape == (batch_size, len(range(-lookback, 0, step)), 2)
      real = w > 0
      end_rows = x[real, 0, 0] / 2 + lookback  # windows start at r - lookback
      assert np.all(end_rows >= bounds.min_index + lookback)
      assert np.all(end_rows < bounds.max_index)
      np.testing.assert_array_equal(y[real, 0], 2 * (end_rows + delay) + 1)
      np.testing.assert_array_equal(np.diff(x[real, :, 0], axis=1) / 2, step)
      assert np.all(x[real, -1, 0] / 2 < end_rows)  # a window never sees its end row


@pytest.mark.parametrize("reverse", [False, True])
def test_gather_cuts_every_window_up_to_the_last_row(reverse):
  data = _data(53, features=2)  # 53 rows: a multiple of no step below
  for step in range(1, 6):
    for lookback in (step, 7, 12):
      time = len(range(-lookback, 0, step))
      rows = np.arange(lookback, 53)  # every end row; row 52 is the data's last
      x, y = windows.gather(data, rows, lookback=lookback, step=step, delay=0,
                            target_index=1, reverse=reverse)
      expected = np.stack([data[r - lookback:r:step] for r in rows])
      np.testing.assert_array_equal(x, expected[:, ::-1] if reverse else expected)
      np.testing.assert_array_equal(y[:, 0], data[rows, 1])
      assert x.shape == (len(rows), time, 2)


def test_batches_are_fresh_float32_arrays_over_one_shared_layout():
  data = _data(400).astype(np.float64)
  first, second = _batches(data), _batches(data, batch_size=4)
  x, _, _ = next(second.val())
  assert x.dtype == np.float32 and x.flags.c_contiguous and x.flags.owndata
  x[:] = np.nan  # a consumer may write into its batch: later batches are unaffected
  again, _, _ = next(first.val())
  end_row = next(first.rows("val"))[0]
  np.testing.assert_array_equal(again[0], data[end_row - 24:end_row:3].astype(np.float32))
  layout = windows.layout(data, time=first.time_steps, step=3, reverse=False)
  assert layout is windows.layout(data, time=second.time_steps, step=3, reverse=False)
  keys = [key for key in windows._LAYOUTS if key[0] == id(data)]
  assert keys
  del data, first, second, layout
  gc.collect()
  assert not any(key in windows._LAYOUTS for key in keys)  # dropped with its array
