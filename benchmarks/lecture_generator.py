"""The lecture's window generator, transcribed: the reference for tests and timings."""
import numpy as np


def lecture_generator(data, lookback, delay, min_index, max_index, shuffle=False,
                      batch_size=128, step=6, *, rng=None, target=1):
  """Chollet, Deep Learning with Python, 1st ed., section 6.3, word for word, but for two
  keyword arguments: `rng` (a numpy Generator) draws the rows in place of
  `np.random.randint`, so that a test can give both samplers the same draws, and
  `target` is the target column (the lecture's 1, T (degC) in Jena)."""
  if max_index is None:
    max_index = len(data) - delay - 1
  i = min_index + lookback
  while 1:
    if shuffle:
      if rng is None:
        rows = np.random.randint(min_index + lookback, max_index, size=batch_size)
      else:
        rows = rng.integers(min_index + lookback, max_index, size=batch_size)
    else:
      if i + batch_size >= max_index:
        i = min_index + lookback
      rows = np.arange(i, min(i + batch_size, max_index))
      i += len(rows)
    samples = np.zeros((len(rows), lookback // step, data.shape[-1]))
    targets = np.zeros((len(rows),))
    for j, row in enumerate(rows):
      indices = range(rows[j] - lookback, rows[j], step)
      samples[j] = data[indices]
      targets[j] = data[rows[j] + delay][target]
    yield samples, targets
