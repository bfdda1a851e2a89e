"""A finished run as a model you can use: `rnn_jax.load(run_dir)`.

  predictor = rnn_jax.load("runs/imdb_sentiment/lstm")
  predictor.predict(["A great film.", "Dull."])     # <float32>[2] probabilities of "positive"
  predictor = rnn_jax.load("runs/jena_forecast/gru")
  predictor.predict("new_weather.csv")               # the target, in its unit, per window

A run directory holds what rebuilding needs: `model.json` (the layer stack,
rnn_jax.io.serialize), `preprocessing.json` (+ `vocabulary.txt` for IMDB) and the best
parameters (`checkpoints/best`). The parameters are restored as host (numpy) arrays
whatever devices the run was trained on, so a run trained on several devices loads on
one.

`Predictor.preprocess(raw)` turns raw inputs into the model's input array,
`Predictor.apply(x)` gives the model's outputs (logits; normalized forecasts),
`Predictor.postprocess(y)` turns those into predictions, and `predict(raw)` is the three
in a row. What `preprocess` takes depends on the run's preprocessing kind, named in its
preprocessing.json and looked up in `rnn_jax.data.preprocessing` (arrays, imdb, forecast,
or one you register).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from rnn_jax import precision
from rnn_jax.io import checkpoints, serialize
from rnn_jax.errors import UserError
from rnn_jax.io import run_files
from rnn_jax.data import preprocessing as preprocessing_kinds

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
    try:
      self._kind = preprocessing_kinds.get(self.kind)
    except ValueError as e:
      raise ValueError(f"Predictor: preprocessing['kind'] {e}") from None
    self.compute_dtype = self.record.get("compute_dtype", "float32")
    self._computing = precision.with_compute_dtype(model, self.compute_dtype)
    self._apply = jax.jit(lambda p, x: self._computing.apply(p, x, training=False))
    self._predict = jax.jit(lambda p, x: self._postprocess(
        self._computing.apply(p, x, training=False)))

  @property
  def preprocessing_kind(self) -> preprocessing_kinds.Preprocessing:
    """The registered kind (`rnn_jax.data.preprocessing`) this run's inputs go through."""
    return self._kind

  # --- the pieces ------------------------------------------------------------------------

  def preprocess(self, raw) -> np.ndarray:
    """Raw inputs -> the model's input array (see the module docstring). What the run's
    kind does not take is a `TypeError`, a value it cannot use (another width, inf or NaN)
    a `ValueError`, both in the user's terms; an empty batch gives an empty array."""
    return self._kind.preprocess(self, raw)

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
    """Predictions from preprocessed inputs: the function `rnn_jax.io.export` exports."""
    return self._chunked(self._predict, x)

  def predictions_fn(self, model=None):
    """(params, x) -> predictions, a pure function of arrays (for export); `model`: the
    same model computed otherwise (other backends), instead of the predictor's."""
    computing = (self._computing if model is None
                 else precision.with_compute_dtype(model, self.compute_dtype))
    return lambda p, x: self._postprocess(computing.apply(p, x, training=False))

  def _postprocess(self, y):
    return self._kind.postprocess(self, y)

  def _chunked(self, fn, x) -> np.ndarray:
    x = np.asarray(x)
    if len(x) == 0:  # an empty batch: empty outputs of the shapes one row would give
      shapes = jax.eval_shape(fn, self.params, jax.ShapeDtypeStruct((1, *x.shape[1:]), x.dtype))
      return jax.tree.map(lambda s: np.zeros((0, *s.shape[1:]), s.dtype), shapes)
    outputs = []
    for start in range(0, max(len(x), 1), CHUNK):
      part = x[start:start + CHUNK]
      n = len(part)
      if n < CHUNK and len(x) > CHUNK:  # one compiled shape for every chunk
        part = np.concatenate([part, np.zeros((CHUNK - n, *part.shape[1:]), part.dtype)])
      outputs.append(jax.tree.map(lambda a: np.asarray(a)[:n], fn(self.params, part)))
    return jax.tree.map(lambda *parts: np.concatenate(parts), *outputs)

  # --- forecasting -------------------------------------------------------------------------

  def forecast_table(self, raw):
    """A DataFrame: per window, the row it forecasts (`row`, 0-based, may lie past the
    end), its time when the CSV has times, and the target's forecast in its unit."""
    import pandas as pd
    if self.kind != "forecast":
      raise ValueError("forecast_table is for forecasting runs")
    prep = self.preprocessing
    values = self._kind.values(self, raw)
    predictions = self.predict_arrays(self._kind.windows(self, values))
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
    from rnn_jax.data import timeseries  # pylint: disable=import-outside-toplevel
    prep = self.preprocessing
    if not (prep.get("time_column") or prep.get("time_columns")):
      return None
    return timeseries.read_csv(raw, self._kind.csv_spec(prep, allow_irregular_time=True)).times


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
      raise UserError(f"replica={replica}: the run trained {num_seeds} replicas "
                      f"(0..{num_seeds - 1})")
    params = jax.tree.map(lambda a: a[replica], params)
  return params


def _verified_bytes(run_dir: Path, name: str, manifest: Optional[dict]) -> bytes:
  """The bytes of run file `name`, checked against model.json's record of its size and
  SHA-256 (format 2); a missing, truncated or changed file is a `UserError` naming it."""
  path = run_dir / name
  try:
    data = path.read_bytes()
  except FileNotFoundError:
    raise UserError(f"{path}: no such file; the run needs it (model.json "
                    f"{'lists' if manifest and name in manifest else 'refers to'} it)") from None
  except OSError as e:
    raise UserError(f"{path}: cannot read: {e.strerror or e}") from None
  if manifest is not None:
    if name not in manifest:
      raise UserError(f"{path}: not a file this run wrote ({run_dir / run_files.MODEL_FILE} lists "
                      f"{', '.join(sorted(manifest)) or 'none'})")
    expected = manifest[name]
    if len(data) != expected["bytes"]:
      raise UserError(f"{path}: {len(data)} bytes, but the run wrote {expected['bytes']} "
                      f"(truncated or changed since; {run_dir / run_files.MODEL_FILE} records it)")
    if run_files.file_record(data)["sha256"] != expected["sha256"]:
      raise UserError(f"{path}: its SHA-256 is not the one the run wrote (changed since; "
                      f"{run_dir / run_files.MODEL_FILE} records it)")
  return data


def _check_preprocessing(path: Path, prep: dict) -> None:
  """preprocessing.json's kind is registered and its fields are what that kind reads:
  else a `UserError` naming the file."""
  if prep.get("kind") not in preprocessing_kinds.kinds():
    raise UserError(f"{path}: not a preprocessing file: 'kind' is {prep.get('kind')!r}, not "
                    f"one of {', '.join(preprocessing_kinds.kinds())}")
  kind = preprocessing_kinds.get(prep["kind"])
  problem = kind.problem(prep)
  if problem:
    raise UserError(f"{path}: not a preprocessing file: {problem}")


def read_run_files(run_dir: PathLike) -> tuple[Any, dict, dict, tuple]:
  """(model or None, model.json's record, preprocessing, vocabulary) of a run directory,
  every file checked (`serialize.load_model`, the sizes and checksums model.json records,
  each field `Predictor` reads): anything wrong is one `UserError` naming the file. A run
  missing a file it needs is refused by name; nothing is silently defaulted."""
  run_dir = Path(run_dir)
  model_file = run_dir / run_files.MODEL_FILE
  if not run_dir.is_dir():
    raise UserError(f"{run_dir}: no such run directory")
  if not model_file.is_file():
    runs = sorted(p.parent.name for p in run_dir.glob(f"*/{run_files.MODEL_FILE}"))
    if runs:  # an experiment's --workdir: the parent of one run per --model
      raise UserError(f"{run_dir} holds the runs {', '.join(runs)}: pass one of them, e.g. "
                      f"{run_dir / runs[0]}")
    raise UserError(f"{run_dir}: no {run_files.MODEL_FILE} (a run of an older rnn_jax, or not "
                    "a run's directory)")
  built, record = serialize.load_model(model_file)
  manifest = record.get("files")  # None for format 1, which recorded no checksums
  prep_file = run_dir / run_files.PREPROCESSING_FILE
  preprocessing = serialize.read_json_object(
      prep_file, "a preprocessing file",
      _verified_bytes(run_dir, run_files.PREPROCESSING_FILE, manifest))
  _check_preprocessing(prep_file, preprocessing)
  vocabulary = ()
  if preprocessing.get("vocabulary_file"):
    name = preprocessing["vocabulary_file"]
    data = _verified_bytes(run_dir, name, manifest)
    try:
      text = data.decode("utf-8")
    except UnicodeDecodeError:
      raise UserError(f"{run_dir / name}: not UTF-8 text") from None
    if text and not text.endswith("\n"):
      raise UserError(f"{run_dir / name}: its last line is cut short (truncated?)")
    vocabulary = tuple(text.split("\n")[:-1])
    size = preprocessing.get("vocabulary_size")
    if size is not None and size != len(vocabulary):
      raise UserError(f"{run_dir / name}: {len(vocabulary)} words, but "
                      f"{prep_file.name} records {size} (truncated or changed since)")
  return built, record, preprocessing, vocabulary


def load(run_dir: PathLike, *, model=None, replica: int = 0) -> Predictor:
  """The run in `run_dir` (one model's workdir) as a `Predictor`, its files checked
  (`read_run_files`).

  `model` rebuilds the architecture in code when the run has no model.json (a cell of
  your own); `replica` picks one of --num_seeds replicas.
  """
  run_dir = Path(run_dir)
  built, record, preprocessing, vocabulary = read_run_files(run_dir)
  num_seeds = int(record.get("num_seeds", 1))
  if (isinstance(replica, bool) or not isinstance(replica, int)
      or not 0 <= replica < num_seeds):
    raise UserError(f"replica={replica!r}: {run_dir} trained {num_seeds} replica"
                    f"{'s' if num_seeds > 1 else ''} (0..{num_seeds - 1})")
  model = model or built
  if model is None:
    raise UserError(f"{run_dir}: {run_files.MODEL_FILE} holds no architecture "
                    f"({record.get('not_serializable')}); pass model=...")
  params = restore_params(run_dir, model, record, replica)
  return Predictor(model, params, preprocessing, record=record, run_dir=run_dir,
                   vocabulary=vocabulary)
