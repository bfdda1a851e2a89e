"""Preprocessing kinds: how a run's raw inputs become the model's inputs, and its outputs
predictions.

A run records its kind by name in preprocessing.json (`{"kind": "imdb", ...}`, written by
`rnn_jax.io.run_files`); `rnn_jax.load` looks the name up here and hands the record to
that kind. Three kinds come built in:

  arrays    arrays as the model takes them (the adding problem); predictions: outputs.
  imdb      texts (a list of str, or one str), tokenized and encoded exactly as the
            training reviews were -> <int32>[n, maxlen]; predictions: P(positive).
  forecast  a pandas DataFrame or a CSV path with the training's columns -> one window
            for each row r >= lookback (the rows r - lookback .. r - 1, every `step`th,
            normalized with the training mean and std); prediction i forecasts the
            target at row lookback + i + delay (0-based), in its own unit.

A kind of your own subclasses `Preprocessing` and is `register`ed before `load`: the
loader never changes for it.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Optional

import jax
import numpy as np

from rnn_jax.errors import UserError


class Preprocessing:
  """One kind of preprocessing: `kind` is the name runs record; every method gets the
  `Predictor` (its `preprocessing` record, `record` (model.json), `vocabulary`,
  `run_dir`)."""
  kind: str = ""

  def problem(self, record: dict) -> Optional[str]:
    """What is wrong with a preprocessing.json record of this kind, or None."""
    del record
    return None

  def preprocess(self, predictor, raw) -> np.ndarray:
    """Raw inputs -> the model's input array; what the kind does not take is a
    `TypeError`, a value it cannot use a `ValueError`, in the user's terms."""
    raise NotImplementedError

  def postprocess(self, predictor, outputs: jax.Array) -> jax.Array:
    """The model's outputs -> predictions; traced (jit, `rnn_jax.io.export`)."""
    del predictor
    return outputs


# The kinds by name; `register` adds one.
_KINDS: dict[str, Preprocessing] = {}


def register(preprocessing: Preprocessing) -> Preprocessing:
  """Makes `preprocessing` the one `load` uses for runs that record its `kind`."""
  if not isinstance(preprocessing, Preprocessing) or not preprocessing.kind:
    raise TypeError("register: a Preprocessing instance with a non-empty kind, got "
                    f"{preprocessing!r}")
  _KINDS[preprocessing.kind] = preprocessing
  return preprocessing


def kinds() -> tuple[str, ...]:
  """The registered kinds' names."""
  return tuple(_KINDS)


def get(kind: Any) -> Preprocessing:
  """The registered kind named `kind`, or a `ValueError` listing the known ones."""
  if isinstance(kind, str) and kind in _KINDS:
    return _KINDS[kind]
  raise ValueError(f"must be one of {', '.join(_KINDS)}, got {kind!r} (a kind of your own: "
                   "rnn_jax.data.preprocessing.register it first)")


def check_finite(x: np.ndarray, what: str) -> None:
  """A `ValueError` naming the first inf or NaN of a float array (the CSV reader refuses
  them too), rather than silently wrong predictions."""
  if x.dtype.kind == "f" and not np.isfinite(x).all():
    index = tuple(int(i) for i in np.argwhere(~np.isfinite(x))[0])
    raise ValueError(f"{what} holds {x[index]} at index {index}: every value must be finite")


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


class Arrays(Preprocessing):
  """Arrays as the model takes them <input_dtype>[n, ..., features], checked."""
  kind = "arrays"

  def preprocess(self, predictor, raw) -> np.ndarray:
    dtype = predictor.record.get("input_dtype", "float32")
    shape = tuple(predictor.record.get("input_shape", ()))
    wanted = f"<{dtype}>[n, {', '.join(map(str, shape))}] arrays (the training's inputs)"
    if isinstance(raw, (str, bytes, bytearray)) or (
        hasattr(raw, "columns") and hasattr(raw, "iloc")):
      raise TypeError(f"this run takes {wanted}, got {type(raw).__name__}")
    try:
      x = np.asarray(raw)
    except ValueError as e:  # ragged nested lists
      raise ValueError(f"this run takes {wanted}; the input is not one array ({e})") from None
    if x.dtype.kind not in "biuf":
      raise TypeError(f"this run takes {wanted}, got values of dtype {x.dtype} "
                      "(strings or objects?)")
    if x.size == 0 and x.shape[:1] in ((0,), ()) and x.ndim <= len(shape) + 1:
      return np.zeros((0, *shape), dtype)  # an empty batch
    if x.ndim != len(shape) + 1 or (shape and x.shape[-1] != shape[-1]):
      raise ValueError(f"this run takes {wanted}, got shape {x.shape}")
    check_finite(x, "the input")
    return x.astype(dtype)


class Reviews(Preprocessing):
  """IMDB reviews: texts encoded as the training reviews were (`rnn_jax.data.imdb.encode`)."""
  kind = "imdb"

  def problem(self, record: dict) -> Optional[str]:
    for key in ("num_words", "maxlen"):
      if not (record.get(key) is None or (_is_int(record[key]) and record[key] >= 1)):
        return f"{key!r} is {record.get(key)!r}, not a positive integer"
    name = record.get("vocabulary_file")
    if not (name is None or (isinstance(name, str) and name and Path(name).name == name)):
      return f"'vocabulary_file' is {name!r}, not a file name in the run's directory"
    return None

  def preprocess(self, predictor, raw) -> np.ndarray:
    from rnn_jax.data import imdb  # pylint: disable=import-outside-toplevel
    wanted = "this run takes a review (a string) or a list of reviews"
    if isinstance(raw, str):
      texts = [raw]
    elif isinstance(raw, (bytes, bytearray)):
      raise TypeError(f"{wanted}, got bytes: decode them first (e.g. data.decode('utf-8'))")
    elif isinstance(raw, np.ndarray) and raw.ndim == 1:
      texts = raw.tolist()
    elif isinstance(raw, (list, tuple)):
      texts = list(raw)
    else:
      raise TypeError(f"{wanted}, got {type(raw).__name__}")
    for i, text in enumerate(texts):
      if not isinstance(text, str):
        raise TypeError(f"{wanted}: review {i} is {type(text).__name__}, not a string")
    if not texts:  # an empty batch
      return np.zeros((0, *predictor.record.get("input_shape", ())), np.int32)
    if not predictor.vocabulary:
      raise UserError(f"{predictor.run_dir}: this run was trained on pre-encoded reviews (an "
                      "imdb.npz) and has no vocabulary; give predict_arrays word ids")
    return imdb.encode(texts, predictor.vocabulary, **predictor.preprocessing)

  def postprocess(self, predictor, outputs: jax.Array) -> jax.Array:
    return jax.nn.sigmoid(outputs.reshape(outputs.shape[0], -1)[:, 0])


class Windows(Preprocessing):
  """A forecasting run's series: a CSV or DataFrame cut into normalized windows; the
  forecasts back in the target's unit."""
  kind = "forecast"

  def problem(self, record: dict) -> Optional[str]:
    columns = record.get("columns")
    if not (isinstance(columns, list) and columns and all(isinstance(c, str) for c in columns)):
      return f"'columns' is {columns!r}, not a list of column names"
    if record.get("target") not in columns:
      return f"'target' {record.get('target')!r} is not one of 'columns'"
    for key in ("mean", "std"):
      values = record.get(key)
      if not (isinstance(values, list) and len(values) == len(columns) and all(
          isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
          for v in values)):
        return f"{key!r} is not {len(columns)} finite numbers, one per column"
    if not all(v > 0 for v in record["std"]):
      return "'std' holds a value that is not positive"
    for key, low in (("lookback", 1), ("step", 1), ("delay", 0)):
      if not (_is_int(record.get(key)) and record[key] >= low):
        return f"{key!r} is {record.get(key)!r}, not an integer of at least {low}"
    if record["lookback"] % record["step"]:
      return "'step' does not divide 'lookback'"
    if not isinstance(record.get("reverse", False), bool):
      return "'reverse' is not true or false"
    return None

  def preprocess(self, predictor, raw) -> np.ndarray:
    return self.windows(predictor, self.values(predictor, raw))

  def postprocess(self, predictor, outputs: jax.Array) -> jax.Array:
    prep = predictor.preprocessing
    t = prep["columns"].index(prep["target"])
    mean, std = np.float32(prep["mean"][t]), np.float32(prep["std"][t])
    return outputs.reshape(outputs.shape[0], -1)[:, 0] * std + mean

  @staticmethod
  def csv_spec(prep: dict, *, allow_irregular_time: Optional[bool] = None):
    """The `timeseries.CsvSpec` the training read its CSV with."""
    from rnn_jax.data import timeseries  # pylint: disable=import-outside-toplevel
    if allow_irregular_time is None:
      allow_irregular_time = bool(prep.get("allow_irregular_time"))
    return timeseries.CsvSpec(
        target=prep["target"], features=list(prep["columns"]),
        time_column=prep.get("time_column"), time_columns=prep.get("time_columns"),
        time_format=prep.get("time_format"), fill_missing=prep.get("fill_missing"),
        allow_irregular_time=allow_irregular_time)

  def values(self, predictor, raw) -> np.ndarray:
    """<float64>[rows, features] in the training's column order, missing cells filled."""
    import pandas as pd  # pylint: disable=import-outside-toplevel
    from rnn_jax.data import timeseries  # pylint: disable=import-outside-toplevel
    prep = predictor.preprocessing
    columns = list(prep["columns"])
    if isinstance(raw, (str, os.PathLike)):
      series = timeseries.read_csv(raw, self.csv_spec(prep))
      if list(series.columns) != columns:
        raise UserError(f"{raw}: the columns {list(series.columns)} are not in the training's "
                        f"order {columns}")
      return series.values
    if not isinstance(raw, pd.DataFrame):
      raise TypeError(f"a forecasting run takes a pandas DataFrame or a CSV path, got "
                      f"{type(raw).__name__}")
    absent = [c for c in columns if c not in raw.columns]
    if absent:
      raise ValueError(f"the DataFrame lacks the training columns {absent} (it has "
                       f"{list(raw.columns)})")
    frame = raw[columns].apply(pd.to_numeric, errors="coerce")
    numbers = frame.to_numpy(np.float64)
    if np.isinf(numbers).any():  # as the CSV reader, which takes inf for not a number
      row, column = np.argwhere(np.isinf(numbers))[0]
      raise ValueError(f"the DataFrame's row {raw.index[row]!r}, column {columns[column]!r}: "
                       f"not a number: {numbers[row, column]} (inf is refused, as in a CSV)")
    if frame.isna().to_numpy().any():
      mode = prep.get("fill_missing")
      if mode is None:
        row, column = np.argwhere(frame.isna().to_numpy())[0]
        raise ValueError(f"{int(frame.isna().to_numpy().sum())} missing or non-numeric cells "
                         f"in the training columns, e.g. row {raw.index[row]!r}, column "
                         f"{columns[column]!r}, and the run did not fill missing cells")
      frame = (frame.interpolate(method="linear", limit_direction="both", axis=0)
               if mode == "interpolate" else frame.ffill().bfill())
    values = frame.to_numpy(np.float64)
    check_finite(values, "the DataFrame (after filling missing cells)")
    return values

  @staticmethod
  def windows(predictor, values: np.ndarray) -> np.ndarray:
    """<float32>[windows, time, features]: one window ending at each row from `lookback`."""
    from rnn_jax.data import windows  # pylint: disable=import-outside-toplevel
    prep = predictor.preprocessing
    lookback, step = prep["lookback"], prep["step"]
    if len(values) == 0:  # an empty batch
      return np.zeros((0, len(range(-lookback, 0, step)), values.shape[1]), np.float32)
    if len(values) < lookback:
      raise ValueError(f"{len(values)} rows are fewer than one window (lookback {lookback})")
    data = ((values - np.asarray(prep["mean"])) / np.asarray(prep["std"])).astype(np.float32)
    time = len(range(-lookback, 0, step))
    ends = np.arange(lookback, len(values) + 1)
    layout = windows.WindowLayout.of(data, time=time, step=step, reverse=bool(prep["reverse"]))
    return layout.windows(ends - lookback)


for _built_in in (Reviews(), Windows(), Arrays()):
  register(_built_in)
del _built_in
