"""A finished run as a model you can use: `rnn_jax.load(run_dir)`.

  predictor = rnn_jax.load("runs/imdb_sentiment/lstm")
  predictor.predict(["A great film.", "Dull."])     # <float32>[2] probabilities of "positive"
  predictor = rnn_jax.load("runs/jena_forecast/gru")
  predictor.predict("new_weather.csv")               # the target, in its unit, per window

A run directory holds what rebuilding needs: `model.json` (the layer stack,
rnn_jax.serialize), `preprocessing.json` (+ `vocabulary.txt` for IMDB) and the best
parameters (`checkpoints/best`). The parameters are restored as host (numpy) arrays
whatever devices the run was trained on, so a run trained on several devices loads on
one.

`Predictor.preprocess(raw)` turns raw inputs into the model's input array,
`Predictor.apply(x)` gives the model's outputs (logits; normalized forecasts),
`Predictor.postprocess(y)` turns those into predictions, and `predict(raw)` is the three
in a row. What `preprocess` takes, by the run's kind:

  imdb      texts (a list of str, or one str): tokenized and encoded exactly as the
            training reviews were -> <int32>[n, maxlen]; predictions: P(positive).
  forecast  a pandas DataFrame or a CSV path with the training's columns -> one window
            for each row r >= lookback (the rows r - lookback .. r - 1, every `step`th,
            normalized with the training mean and std); prediction i forecasts the
            target at row lookback + i + delay (0-based), in its own unit.
            `forecast_table` adds those rows (and times, for a CSV with times).
  arrays    arrays as the model takes them (the adding problem); predictions: outputs.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from rnn_jax import checkpoints, precision, serialize
from rnn_jax.errors import UserError
from rnn_jax.train import saved

PathLike = Union[str, os.PathLike]
CHUNK = 256  # rows per compiled call of `apply` (the last chunk is padded)


class Predictor:
  """A trained model with its preprocessing; see the module docstring."""

  def __init__(self, model, params, preprocessing: dict, *, record: Optional[dict] = None,
               run_dir: Optional[PathLike] = None, vocabulary: Sequence[str] = ()):
    self.model = model
    self.params = params
    self.preprocessing = preprocessing
    self.record = record or {}
    self.run_dir = None if run_dir is None else Path(run_dir)
    self.vocabulary = tuple(vocabulary)
    self.kind = preprocessing.get("kind", "arrays")
    self.compute_dtype = self.record.get("compute_dtype", "float32")
    self._computing = precision.with_compute_dtype(model, self.compute_dtype)
    self._apply = jax.jit(lambda p, x: self._computing.apply(p, x, training=False))
    self._predict = jax.jit(lambda p, x: self._postprocess(
        self._computing.apply(p, x, training=False)))

  # --- the pieces ------------------------------------------------------------------------

  def preprocess(self, raw) -> np.ndarray:
    """Raw inputs -> the model's input array (see the module docstring)."""
    if self.kind == "imdb":
      return self._encode_texts(raw)
    if self.kind == "forecast":
      return self._windows(self._values(raw))
    dtype = self.record.get("input_dtype", "float32")
    return np.asarray(raw, dtype)

  def apply(self, x) -> np.ndarray:
    """The model's outputs (float32) on input arrays, in chunks of `CHUNK` rows."""
    return self._chunked(self._apply, x)

  def postprocess(self, outputs) -> np.ndarray:
    """Model outputs -> predictions (P(positive); the target in its unit; as they are)."""
    return np.asarray(self._postprocess(jnp.asarray(outputs)))

  def predict(self, raw) -> np.ndarray:
    """`postprocess(apply(preprocess(raw)))`."""
    return self.predict_arrays(self.preprocess(raw))

  def predict_arrays(self, x) -> np.ndarray:
    """Predictions from preprocessed inputs: the function `rnn_jax.export` exports."""
    return self._chunked(self._predict, x)

  def predictions_fn(self, model=None):
    """(params, x) -> predictions, a pure function of arrays (for export); `model`: the
    same model computed otherwise (other backends), instead of the predictor's."""
    computing = (self._computing if model is None
                 else precision.with_compute_dtype(model, self.compute_dtype))
    return lambda p, x: self._postprocess(computing.apply(p, x, training=False))

  def _postprocess(self, y):
    if self.kind == "imdb":
      return jax.nn.sigmoid(y.reshape(y.shape[0], -1)[:, 0])
    if self.kind == "forecast":
      t = self.preprocessing["columns"].index(self.preprocessing["target"])
      mean = np.float32(self.preprocessing["mean"][t])
      std = np.float32(self.preprocessing["std"][t])
      return y.reshape(y.shape[0], -1)[:, 0] * std + mean
    return y

  def _chunked(self, fn, x) -> np.ndarray:
    x = np.asarray(x)
    outputs = []
    for start in range(0, max(len(x), 1), CHUNK):
      part = x[start:start + CHUNK]
      n = len(part)
      if n < CHUNK and len(x) > CHUNK:  # one compiled shape for every chunk
        part = np.concatenate([part, np.zeros((CHUNK - n, *part.shape[1:]), part.dtype)])
      outputs.append(jax.tree.map(lambda a: np.asarray(a)[:n], fn(self.params, part)))
    return jax.tree.map(lambda *parts: np.concatenate(parts), *outputs)

  # --- imdb --------------------------------------------------------------------------------

  def _encode_texts(self, texts) -> np.ndarray:
    from rnn_jax.data import imdb
    if isinstance(texts, str):
      texts = [texts]
    if not self.vocabulary:
      raise UserError(f"{self.run_dir}: this run was trained on pre-encoded reviews (an "
                      "imdb.npz) and has no vocabulary; give predict_arrays word ids")
    return imdb.encode(list(texts), self.vocabulary, **self.preprocessing)

  # --- forecasting -------------------------------------------------------------------------

  def _values(self, raw) -> np.ndarray:
    """<float64>[rows, features] in the training's column order, missing cells filled."""
    import pandas as pd
    from rnn_jax.data import timeseries
    prep = self.preprocessing
    columns = list(prep["columns"])
    if isinstance(raw, (str, os.PathLike)):
      spec = timeseries.CsvSpec(
          target=prep["target"], features=columns, time_column=prep.get("time_column"),
          time_columns=prep.get("time_columns"), time_format=prep.get("time_format"),
          fill_missing=prep.get("fill_missing"),
          allow_irregular_time=bool(prep.get("allow_irregular_time")))
      series = timeseries.read_csv(raw, spec)
      if list(series.columns) != columns:
        raise UserError(f"{raw}: the columns {list(series.columns)} are not in the training's "
                        f"order {columns}")
      return series.values
    if not isinstance(raw, pd.DataFrame):
      raise TypeError(f"forecasting takes a pandas DataFrame or a CSV path, got {type(raw)}")
    absent = [c for c in columns if c not in raw.columns]
    if absent:
      raise UserError(f"the DataFrame lacks the training columns {absent} (it has "
                      f"{list(raw.columns)})")
    frame = raw[columns].apply(pd.to_numeric, errors="coerce")
    if frame.isna().to_numpy().any():
      mode = prep.get("fill_missing")
      if mode is None:
        raise UserError(f"{int(frame.isna().to_numpy().sum())} missing or non-numeric cells "
                        "in the training columns, and the run did not fill missing cells")
      frame = (frame.interpolate(method="linear", limit_direction="both", axis=0)
               if mode == "interpolate" else frame.ffill().bfill())
    return frame.to_numpy(np.float64)

  def _windows(self, values: np.ndarray) -> np.ndarray:
    from rnn_jax.data import windows
    prep = self.preprocessing
    lookback, step = prep["lookback"], prep["step"]
    if len(values) < lookback:
      raise UserError(f"{len(values)} rows are fewer than one window (lookback {lookback})")
    data = ((values - np.asarray(prep["mean"])) / np.asarray(prep["std"])).astype(np.float32)
    time = len(range(-lookback, 0, step))
    ends = np.arange(lookback, len(values) + 1)
    layout = windows.WindowLayout.of(data, time=time, step=step, reverse=bool(prep["reverse"]))
    return layout.windows(ends - lookback)

  def forecast_table(self, raw):
    """A DataFrame: per window, the row it forecasts (`row`, 0-based, may lie past the
    end), its time when the CSV has times, and the target's forecast in its unit."""
    import pandas as pd
    if self.kind != "forecast":
      raise ValueError("forecast_table is for forecasting runs")
    prep = self.preprocessing
    values = self._values(raw)
    predictions = self.predict_arrays(self._windows(values))
    rows = np.arange(prep["lookback"], len(values) + 1) + prep["delay"]
    table = {"row": rows}
    times = self._times(raw)
    if times is not None and len(times) > 1:
      spacing = np.diff(times)
      spacing = np.unique(spacing)[np.argmax(np.unique(spacing, return_counts=True)[1])]
      known = np.minimum(rows, len(times) - 1)
      table["time"] = times[known] + (rows - known) * spacing
    table[f"{prep['target']} forecast ({prep['target_unit']})"] = predictions
    return pd.DataFrame(table)

  def _times(self, raw):
    if not isinstance(raw, (str, os.PathLike)):
      return None
    from rnn_jax.data import timeseries
    prep = self.preprocessing
    if not (prep.get("time_column") or prep.get("time_columns")):
      return None
    spec = timeseries.CsvSpec(
        target=prep["target"], features=list(prep["columns"]),
        time_column=prep.get("time_column"), time_columns=prep.get("time_columns"),
        time_format=prep.get("time_format"), fill_missing=prep.get("fill_missing"),
        allow_irregular_time=True)
    return timeseries.read_csv(raw, spec).times


def _input_example(record: dict) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct((1, *record["input_shape"]), jnp.dtype(record["input_dtype"]))


def restore_params(run_dir: PathLike, model, record: dict, replica: Optional[int] = 0):
  """The best checkpoint's parameters as numpy arrays (any saved device layout)."""
  run_dir = Path(run_dir)
  example = _input_example(record)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(example.shape,
                                                                           example.dtype)))
  num_seeds = int(record.get("num_seeds", 1))
  lead = (num_seeds,) if num_seeds > 1 else ()
  target = {"params": jax.tree.map(lambda s: np.zeros((*lead, *s.shape), s.dtype), shapes)}
  problems = []
  restored = checkpoints.restore(run_dir / "checkpoints" / "best", target,
                                 report=problems.append)
  if restored is None:
    why = f" ({problems[-1]})" if problems else ""
    raise UserError(f"{run_dir}: no good checkpoint in {run_dir / 'checkpoints' / 'best'}{why}")
  params = jax.tree.map(np.asarray, restored[1]["params"])
  if num_seeds > 1 and replica is not None:
    if not 0 <= replica < num_seeds:
      raise UserError(f"replica {replica}: the run has {num_seeds} (0..{num_seeds - 1})")
    params = jax.tree.map(lambda a: a[replica], params)
  return params


def load(run_dir: PathLike, *, model=None, replica: int = 0) -> Predictor:
  """The run in `run_dir` (one model's workdir) as a `Predictor`.

  `model` rebuilds the architecture in code when the run has no model.json (a cell of
  your own); `replica` picks one of --num_seeds replicas.
  """
  run_dir = Path(run_dir)
  model_file = run_dir / saved.MODEL_FILE
  if not run_dir.is_dir():
    raise UserError(f"{run_dir}: no such run directory")
  if not model_file.is_file():
    runs = sorted(p.parent.name for p in run_dir.glob(f"*/{saved.MODEL_FILE}"))
    if runs:  # an experiment's --workdir: the parent of one run per --model
      raise UserError(f"{run_dir} holds the runs {', '.join(runs)}: pass one of them, e.g. "
                      f"{run_dir / runs[0]}")
    raise UserError(f"{run_dir}: no {saved.MODEL_FILE} (a run of an older rnn_jax, or not "
                    "a run's directory)")
  built, record = serialize.load_model(model_file)
  model = model or built
  if model is None:
    raise UserError(f"{run_dir}: {saved.MODEL_FILE} holds no architecture "
                    f"({record.get('not_serializable')}); pass model=...")
  prep_file = run_dir / saved.PREPROCESSING_FILE
  preprocessing = json.loads(prep_file.read_text()) if prep_file.is_file() else {"kind": "arrays"}
  vocabulary = ()
  if preprocessing.get("vocabulary_file"):
    text = (run_dir / preprocessing["vocabulary_file"]).read_text(encoding="utf-8")
    vocabulary = tuple(text.split("\n")[:-1])
  params = restore_params(run_dir, model, record, replica)
  return Predictor(model, params, preprocessing, record=record, run_dir=run_dir,
                   vocabulary=vocabulary)
