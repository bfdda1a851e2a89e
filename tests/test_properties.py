"""Property-based tests (hypothesis) of the CSV reader, the IMDB tokenizer and the window sampler.

Each property is checked against a plain reference written the slow, obvious way: the
CSV reader against the numbers that were written, the tokenizer against Keras's own
`text_to_word_sequence`, `pad_sequences` and the id mapping against per-review loops,
and the windows against a Python loop over rows.
"""
import csv
import io

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from rnn_jax.data import imdb, timeseries, windows
from rnn_jax.errors import UserError

SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])

# ---------------------------------------------------------------------------------- CSV

_number = st.one_of(st.floats(-1e12, 1e12, allow_nan=False, allow_infinity=False),
                    st.integers(-10**9, 10**9).map(float))
_repr = lambda v: repr(float(v))  # the shortest text that reads back as the same double
_name = st.text("abcxyzT_ ()%/", min_size=1, max_size=8).map(str.strip).filter(bool)


@st.composite
def _frames(draw):
  """(column names, <float64>[rows, columns]) with distinct, non-blank names."""
  names = draw(st.lists(_name, min_size=1, max_size=4, unique=True))
  rows = draw(st.integers(1, 25))
  values = draw(st.lists(st.lists(_number, min_size=len(names), max_size=len(names)),
                         min_size=rows, max_size=rows))
  return names, np.array(values, np.float64).reshape(rows, len(names))


def _write(path, names, cells, *, newline="\n", bom=False, quote_all=False):
  text = io.StringIO()
  writer = csv.writer(text, lineterminator=newline,
                      quoting=csv.QUOTE_ALL if quote_all else csv.QUOTE_MINIMAL)
  writer.writerow(names)
  writer.writerows(cells)
  path.write_bytes(text.getvalue().encode("utf-8-sig" if bom else "utf-8"))


@SETTINGS
@given(frame=_frames(), newline=st.sampled_from(["\n", "\r\n"]), bom=st.booleans(),
       quote_all=st.booleans(), style=st.sampled_from([_repr, "{:.17g}".format, "{:.17e}".format]))
def test_csv_round_trip_gives_the_numbers_written(tmp_path, frame, newline, bom, quote_all,
                                                  style):
  names, values = frame
  path = tmp_path / "frame.csv"
  _write(path, names, [[style(v) for v in row] for row in values], newline=newline, bom=bom,
         quote_all=quote_all)
  series = timeseries.read_csv(path, timeseries.CsvSpec(target=names[-1]))
  assert series.columns == tuple(names) and series.target_index == len(names) - 1
  np.testing.assert_array_equal(series.values, values)  # exactly: 17 digits round-trip
  np.testing.assert_array_equal(series.lines, np.arange(2, len(values) + 2))


_MISSING = sorted(timeseries.MISSING_TOKENS - {""}) + [""]


@SETTINGS
@given(frame=_frames().filter(lambda f: len(f[0]) >= 2), data=st.data(),
       fill=st.sampled_from([None, "interpolate", "ffill"]))
def test_csv_missing_cells_are_named_or_filled(tmp_path, frame, data, fill):
  names, values = frame
  missing = np.array(data.draw(st.lists(st.booleans(), min_size=values.size,
                                        max_size=values.size)), bool).reshape(values.shape)
  assume(missing.any() and not missing.all(axis=1).any())  # an all-blank row is a blank line
  tokens = data.draw(st.lists(st.sampled_from(_MISSING), min_size=values.size,
                              max_size=values.size))
  cells = [[tokens[r * len(names) + c] if missing[r, c] else _repr(values[r, c])
            for c in range(len(names))] for r in range(len(values))]
  path = tmp_path / "gaps.csv"
  _write(path, names, cells)
  spec = timeseries.CsvSpec(target=names[0], fill_missing=fill)
  if fill is None:
    with pytest.raises(UserError) as error:
      timeseries.read_csv(path, spec)
    row, column = map(int, np.argwhere(missing)[0])  # the first missing cell, row by row
    message = str(error.value)
    assert f"line {row + 2} column {names[column]!r}" in message and "\n" not in message
    assert f"{int(missing.sum())} missing cells" in message
    return
  if missing.all(axis=0).any():
    empty = names[int(np.argmax(missing.all(axis=0)))]
    with pytest.raises(UserError) as error:
      timeseries.read_csv(path, spec)
    assert f"column {empty!r} has no values to fill from" in str(error.value)
    return
  filled = timeseries.read_csv(path, spec).values
  assert np.all(np.isfinite(filled))
  np.testing.assert_array_equal(filled[~missing], values[~missing])
  for c in range(len(names)):  # every fill lies within the column's known values
    known = values[~missing[:, c], c]
    assert np.all((filled[:, c] >= known.min()) & (filled[:, c] <= known.max()))


@SETTINGS
@given(frame=_frames(), data=st.data(),
       bad=st.sampled_from(["abc", "inf", "-inf", "1e999", "1,5", "--1", "0x10", "1.2.3"]))
def test_csv_a_bad_number_is_named_by_line_and_column(tmp_path, frame, data, bad):
  names, values = frame
  row = data.draw(st.integers(0, len(values) - 1))
  cells = [[_repr(v) for v in r] for r in values]
  cells[row][0] = bad
  path = tmp_path / "bad.csv"
  _write(path, names, cells)
  with pytest.raises(UserError) as error:
    timeseries.read_csv(path, timeseries.CsvSpec(target=names[0]))
  assert f"line {row + 2}, column {names[0]!r}: not a number: {bad!r}" in str(error.value)


# ---------------------------------------------------------------------------- tokenizer

_text = st.lists(st.one_of(
    st.text("abcDEF'0123 ", min_size=1, max_size=6), st.sampled_from(imdb.KERAS_FILTERS),
    st.sampled_from(["<br />", "<br/>", "<BR>", "é", "ß", "  ", "\n", "\t", "\u00a0"])),
    max_size=30).map("".join)


@SETTINGS
@given(text=_text)
def test_tokenize_is_keras_after_break_tags(text):
  from keras.src.legacy.preprocessing.text import text_to_word_sequence
  words = imdb.tokenize(text)
  assert words == text_to_word_sequence(imdb._BREAK_TAG.sub(" ", text))
  assert all(word and word == word.lower() and " " not in word
             and not set(word) & set(imdb.KERAS_FILTERS) for word in words)


_ranks = st.lists(st.lists(st.integers(1, 60), max_size=12), min_size=1, max_size=10)


@SETTINGS
@given(x_train=_ranks, x_test=_ranks, num_words=st.one_of(st.none(), st.integers(4, 70)),
       index_from=st.integers(2, 4))
def test_ids_are_in_range_with_start_and_oov(x_train, x_test, num_words, index_from):
  # Labels are the reviews' positions, so the shuffled output can be matched to its input.
  (xs, ys), (xt, yt) = imdb.index_like_keras(
      x_train, np.arange(len(x_train)), x_test, np.arange(len(x_test)), num_words=num_words,
      index_from=index_from)
  # Without num_words, Keras takes the largest id present (the start id included).
  limit = num_words or max([index_from + r for x in x_train + x_test for r in x] + [1])
  assert sorted(ys) == list(range(len(x_train))) and sorted(yt) == list(range(len(x_test)))
  for ids, labels, source in ((xs, ys, x_train), (xt, yt, x_test)):
    for row, original in zip(ids, labels):
      ranks = source[original]
      assert row.dtype == np.int32
      # Keras: ids >= the limit become OOV (2), the start (1) too when the limit is 1.
      expected = [i if i < limit else 2 for i in [1] + [r + index_from for r in ranks]]
      assert list(row) == expected
      if num_words:  # every id fits Embedding(num_words, ...)
        assert np.all((row >= 1) & (row < num_words))


def _pad_reference(sequences, maxlen, padding, truncating, value=0):
  if maxlen is None:
    maxlen = max((len(s) for s in sequences), default=0)
  out = []
  for s in sequences:
    s = list(s)
    if len(s) > maxlen:
      s = s[len(s) - maxlen:] if truncating == "pre" else s[:maxlen]
    fill = [value] * (maxlen - len(s))
    out.append(fill + s if padding == "pre" else s + fill)
  return np.array(out, np.int32).reshape(len(sequences), maxlen)


@SETTINGS
@given(sequences=st.lists(st.lists(st.integers(1, 10**6), max_size=15), max_size=8),
       maxlen=st.one_of(st.none(), st.integers(0, 20)),
       padding=st.sampled_from(["pre", "post"]), truncating=st.sampled_from(["pre", "post"]))
def test_pad_sequences_matches_a_loop(sequences, maxlen, padding, truncating):
  padded = imdb.pad_sequences(sequences, maxlen, padding=padding, truncating=truncating)
  np.testing.assert_array_equal(padded, _pad_reference(sequences, maxlen, padding, truncating))


# ------------------------------------------------------------------------------ windows


def _window_loop(data, rows, lookback, step, delay, target, reverse):
  """The lecture's generator, one sample at a time."""
  samples, targets = [], []
  for r in rows:
    window = [data[i] for i in range(r - lookback, r, step)]
    samples.append(window[::-1] if reverse else window)
    targets.append([data[r + delay][target]])
  return np.array(samples, np.float32), np.array(targets, np.float32)


@SETTINGS
@given(rows=st.integers(40, 160), lookback=st.integers(1, 15), step=st.integers(1, 5),
       delay=st.integers(0, 8), batch_size=st.integers(1, 10), features=st.integers(1, 3),
       reverse=st.booleans(), seed=st.integers(0, 2**32 - 1), epoch=st.integers(0, 5))
def test_windows_equal_a_loop(rows, lookback, step, delay, batch_size, features, reverse, seed,
                              epoch):
  data = np.random.default_rng(seed).normal(size=(rows, features)).astype(np.float32)
  target = features - 1
  train_end, val_end = rows // 2, 3 * rows // 4
  try:
    batches = windows.WindowBatches.from_split(
        data, target, train_end=train_end, val_end=val_end, lookback=lookback, step=step,
        delay=delay, batch_size=batch_size, steps_per_epoch=3, reverse=reverse)
  except UserError as error:
    assert "rows are too few" in str(error)
    assume(False)
  loop = lambda end_rows: _window_loop(data, end_rows, lookback, step, delay, target, reverse)
  # Training: the rows of the lecture's np.random draws, from the (seed, epoch) generator.
  rng = np.random.default_rng([seed, epoch])
  for x, y, weight in batches.train(seed, epoch):
    end_rows = rng.integers(lookback, train_end, size=batch_size)
    expected_x, expected_y = loop(end_rows)
    np.testing.assert_array_equal(x, expected_x)
    np.testing.assert_array_equal(y, expected_y)
    np.testing.assert_array_equal(weight, 1)
  # Validation and test: consecutive rows, padded with weight-0 rows only when short.
  for part in ("val", "test"):
    for end_rows, (x, y, weight) in zip(batches.rows(part), getattr(batches, part)()):
      n = len(end_rows)
      assert n and np.all(np.diff(end_rows) == 1)
      assert end_rows[-1] + delay < rows
      expected_x, expected_y = loop(end_rows)
      np.testing.assert_array_equal(x[:n], expected_x)
      np.testing.assert_array_equal(y[:n], expected_y)
      np.testing.assert_array_equal(weight, [1] * n + [0] * (batch_size - n))
