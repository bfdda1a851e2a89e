"""Temperature forecasting (the lecture's Jena climate series, or any evenly spaced CSV).

  python -m experiments.jena_forecast --model=naive,gru          # Jena, the lecture's settings
  python -m experiments.jena_forecast --model=gru \
      --data_path=PRSA_Data_Aotizhongxin_20130301-20170228.csv --target=TEMP \
      --time_columns=year,month,day,hour --exclude=No --fill_missing=interpolate \
      --target_unit=degC --lookback=240 --step=1 --delay=24 \
      --train_fraction=0.5 --val_fraction=0.25 --epochs=10 --steps_per_epoch=200

Every model predicts the target `--delay` rows after a window of `--lookback` rows
sampled every `--step` rows (windows: rnn_jax.data.windows), from every column normalized
with the training rows' mean and std. The defaults are the lecture's: MAE loss, RMSprop,
batches of 128, 500 steps per epoch, 20 epochs (40 with dropout or two layers); `naive`
is the common-sense baseline (tomorrow's temperature is the last one seen), evaluated,
not trained. Each model writes <workdir>/<model>/ (results.json, checkpoints, history.png,
predictions.png); <workdir> also gets the target's plots (whole series, first 10 days).
Summarize with `python -m experiments.summarize --workdir=<workdir>`.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
import re
import time
from typing import Callable, Optional

import jax
import numpy as np
from absl import flags

from experiments import command, forecast_plots, train_flags, variants
from rnn_jax import errors, layers, train
from rnn_jax.io import files
from rnn_jax.data import jena, timeseries, windows

L = layers
# Each builder: (units, dropout, recurrent_dropout, lecture) -> model, with `lecture` the
# --activation, --reset_after and --head choices (None: the layer's default).


def _options(kind, lecture, **defaults):
  return {**defaults, **variants.lecture_options(kind, lecture.get("activation"),
                                                 lecture.get("reset_after"))}


def _head(units, lecture):
  return variants.head(lecture.get("head", "dense"), units)


def _gru(units, dropout, recurrent_dropout, lecture):
  return L.Sequential([L.GRU(units, dropout=dropout, recurrent_dropout=recurrent_dropout,
                             **_options("gru", lecture)), *_head(units, lecture)])


def _stacked_gru(units, dropout, recurrent_dropout, lecture):
  return L.Sequential([
      L.GRU(units, dropout=dropout, recurrent_dropout=recurrent_dropout,
            return_sequences=True, **_options("gru", lecture)),
      L.GRU(2 * units, dropout=dropout, recurrent_dropout=recurrent_dropout,
            **_options("gru", lecture, activation="relu")),
      *_head(units, lecture)])


def _bidirectional_gru(units, dropout, recurrent_dropout, lecture):
  return L.Sequential([
      L.Bidirectional(L.GRU(units, dropout=dropout, recurrent_dropout=recurrent_dropout,
                            **_options("gru", lecture))),
      *_head(units, lecture)])


def _lstm(units, dropout, recurrent_dropout, lecture):
  return L.Sequential([L.LSTM(units, dropout=dropout, recurrent_dropout=recurrent_dropout,
                              **_options("lstm", lecture)), *_head(units, lecture)])


def _min_gru(units, dropout, recurrent_dropout, lecture):
  del recurrent_dropout  # no recurrent weights
  return L.Sequential([L.MinGRU(units, dropout=dropout), *_head(units, lecture)])


def _min_lstm(units, dropout, recurrent_dropout, lecture):
  del recurrent_dropout  # no recurrent weights
  return L.Sequential([L.MinLSTM(units, dropout=dropout), *_head(units, lecture)])


def _mlp(units, dropout, recurrent_dropout, lecture):
  del dropout, recurrent_dropout
  return L.Sequential([L.Flatten(), L.Dense(units, activation="relu"), *_head(units, lecture)])


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """A model of the lecture: build(units, dropout, recurrent_dropout, lecture), and its
  defaults."""
  build: Optional[Callable]  # None: the naive baseline, which is not trained
  epochs: int = 20
  dropout: float = 0.0
  recurrent_dropout: float = 0.0
  reverse: bool = False      # read the windows backwards in time


MODELS = {
    "naive": ModelSpec(None),
    "mlp": ModelSpec(_mlp),
    "gru": ModelSpec(_gru),
    "gru_dropout": ModelSpec(_gru, epochs=40, dropout=0.2, recurrent_dropout=0.2),
    "stacked_gru": ModelSpec(_stacked_gru, epochs=40, dropout=0.1, recurrent_dropout=0.5),
    "reversed_gru": ModelSpec(_gru, reverse=True),
    "bidirectional_gru": ModelSpec(_bidirectional_gru, epochs=40),
    "lstm": ModelSpec(_lstm),
    "min_gru": ModelSpec(_min_gru),
    "min_lstm": ModelSpec(_min_lstm),
}
LECTURE_STEPS_PER_EPOCH = 500

flags.DEFINE_list("model", ["naive", "gru"], f"Models to run, in order, from {list(MODELS)}.")
flags.DEFINE_string("data_path", None, "A CSV (or a zip holding one); default: the Jena "
                    "climate CSV from the cache, downloaded if needed.")
flags.DEFINE_string("target", jena.TARGET, "The column to forecast.")
flags.DEFINE_list("features", None, "Input columns (default: every numeric column but "
                  "--exclude and the time columns); the target is always one.")
flags.DEFINE_list("exclude", [], "Columns left out of the default features.")
flags.DEFINE_string("time_column", jena.TIME_COLUMN, "The column of timestamps ('' for none).")
flags.DEFINE_list("time_columns", None, "Columns that make up the time instead, e.g. "
                  "year,month,day,hour.")
flags.DEFINE_string("time_format", None, "strptime format of --time_column (default: Jena's "
                    "'%d.%m.%Y %H:%M:%S', else ISO 8601).")
flags.DEFINE_enum("fill_missing", None, list(timeseries.FILL_MODES), "Fill missing cells "
                  "(default: they are an error).")
flags.DEFINE_bool("allow_irregular_time", None, "Take rows as evenly spaced even when the "
                  "timestamps repeat or have gaps (default: only for the canonical Jena CSV).")
flags.DEFINE_string("csv_separator", ",", "The CSV's field separator, e.g. ';' (or 'tab').")
flags.DEFINE_string("decimal", ".", "The decimal mark of the CSV's numbers: '.' or ','.")
flags.DEFINE_string("target_unit", None, "The target's unit for MAE reports (default: from "
                    "the column name, e.g. 'T (degC)' -> degC).")
flags.DEFINE_integer("lookback", jena.LOOKBACK, "Rows of history each window spans.")
flags.DEFINE_integer("step", jena.STEP, "Sample every this many rows within a window.")
flags.DEFINE_integer("delay", jena.DELAY, "Forecast the target this many rows after the window.")
flags.DEFINE_integer("train_end", None, "Row where training data ends (default 200000).")
flags.DEFINE_integer("val_end", None, "Row where validation data ends (default 300000).")
flags.DEFINE_float("train_fraction", None, "Training part as a fraction of rows.")
flags.DEFINE_float("val_fraction", None, "Validation part as a fraction of rows.")
flags.DEFINE_integer("units", 32, "Units of the first layer (stacked_gru's second has twice).")
flags.DEFINE_float("dropout", None, "Input dropout of recurrent layers (default: the model's: "
                   "0.2 for gru_dropout, 0.1 for stacked_gru, else 0).")
flags.DEFINE_float("recurrent_dropout", None, "Recurrent dropout (default: the model's: 0.2 "
                   "for gru_dropout, 0.5 for stacked_gru, else 0).")
FLAGS = train_flags.define_flags(batch_size=128, optimizer="rmsprop", learning_rate=1e-3,
                                 epochs=20, steps_per_epoch=LECTURE_STEPS_PER_EPOCH)
flags.adopt_module_key_flags(train_flags)  # --help lists the shared training flags too
_LONGER = [name for name, spec in MODELS.items() if spec.build and spec.epochs != 20]
FLAGS["epochs"].help = f"Epochs (default: 20, and 40 for {', '.join(_LONGER)})."
FLAGS["steps_per_epoch"].help = "Training batches per epoch, each of random windows."
FLAGS["validation_steps"].help = "Validation batches (default: every validation window)."
FLAGS["workdir"].help = ("Parent directory: each model's run goes to <workdir>/<model>, "
                         "the target's plots to <workdir> (default: runs/jena_forecast, or "
                         "runs/forecast_<file name> for another CSV).")


@dataclasses.dataclass(frozen=True)
class Problem:
  """The data of one run: the series, its normalization and the windows over it."""
  experiment: str
  series: timeseries.Series
  norm: timeseries.Normalization
  split: timeseries.Split
  unit: str
  allow_irregular_time: bool = False

  @property
  def target_std(self) -> float:
    return float(self.norm.std[self.series.target_index])

  def denormalize(self, values: np.ndarray) -> np.ndarray:
    t = self.series.target_index
    return values * self.norm.std[t] + self.norm.mean[t]

  @functools.cached_property
  def normalized(self) -> np.ndarray:
    """<float32>[rows, features], shared by every model's windows."""
    return self.norm(self.series.values)

  def batches(self, reverse: bool) -> windows.WindowBatches:
    return windows.WindowBatches.from_split(
        self.normalized, self.series.target_index,
        train_end=self.split.train_end, val_end=self.split.val_end,
        lookback=FLAGS.lookback, step=FLAGS.step, delay=FLAGS.delay,
        batch_size=FLAGS.batch_size,
        steps_per_epoch=FLAGS.steps_per_epoch or LECTURE_STEPS_PER_EPOCH,
        val_steps=FLAGS.validation_steps, reverse=reverse, source=self.series.path)

  @property
  def label(self) -> str:
    """The target with its unit, once: 'T (degC)', or 'TEMP (degC)' from --target_unit."""
    target = self.series.target
    return target if f"({self.unit})" in target else f"{target} ({self.unit})"

  def horizon(self, rows: int) -> str:
    """`rows` rows as a time span in the data's spacing ('24 h'), else '24 rows'."""
    spacing = self.series.spacing
    if spacing is None or spacing <= np.timedelta64(0):
      return f"{rows} rows"
    seconds = int(round(rows * (spacing / np.timedelta64(1, "s"))))
    if seconds >= 2 * 86400 and seconds % 86400 == 0:
      return f"{seconds // 86400} days"
    for unit, size in (("h", 3600), ("min", 60)):
      if seconds >= size and seconds % size == 0:
        return f"{seconds // size} {unit}"
    return f"{seconds} s"

  def rows_in_days(self, days: float, default: int = 1440) -> int:
    """How many rows span `days` (the lecture's 10 days are 1440 rows of 10 minutes)."""
    spacing = self.series.spacing
    if spacing is None or spacing <= np.timedelta64(0):
      return default
    return max(1, int(np.timedelta64(int(days * 86400), "s") // spacing))

  def extra_results(self, batches: windows.WindowBatches) -> dict:
    t = self.series.target_index
    return {"data": self.series.path, "rows": len(self.series), "target": self.series.target,
            "target_unit": self.unit, "target_mean": float(self.norm.mean[t]),
            "target_std": self.target_std, "features": list(self.series.columns),
            "train_end": self.split.train_end, "val_end": self.split.val_end,
            "lookback": batches.lookback, "step": batches.step, "delay": batches.delay,
            "val_steps": batches.val_steps, "test_steps": batches.test_steps}


  def preprocessing(self, batches: windows.WindowBatches) -> dict:
    """preprocessing.json: how a CSV or DataFrame becomes this run's windows
    (`rnn_jax.io.predictor.ForecastPreprocessing` reads it)."""
    return {"kind": "forecast", "target": self.series.target, "target_unit": self.unit,
            "columns": list(self.series.columns), "mean": self.norm.mean.tolist(),
            "std": self.norm.std.tolist(), "lookback": batches.lookback, "step": batches.step,
            "delay": batches.delay, "reverse": batches.reverse,
            "time_column": None if FLAGS.time_columns else (FLAGS.time_column or None),
            "time_columns": list(FLAGS.time_columns) if FLAGS.time_columns else None,
            "time_format": FLAGS.time_format, "fill_missing": FLAGS.fill_missing,
            "allow_irregular_time": self.allow_irregular_time}


def _unit_of(column: str) -> str:
  found = re.search(r"\(([^()]+)\)\s*$", column)
  return found.group(1) if found else re.sub(r"\W+", "_", column).strip("_") or "unit"


def load_problem() -> Problem:
  """Reads and splits the data the flags name; every problem is a one-line UserError."""
  path = jena.locate(FLAGS.data_path)
  if FLAGS.time_columns and FLAGS["time_column"].present and FLAGS.time_column:
    raise errors.UserError("give --time_column or --time_columns, not both")
  canonical = jena.is_canonical(path)
  allow_irregular = canonical if FLAGS.allow_irregular_time is None else FLAGS.allow_irregular_time
  spec = timeseries.CsvSpec(
      target=FLAGS.target, features=FLAGS.features, exclude=tuple(FLAGS.exclude),
      time_column=None if FLAGS.time_columns else (FLAGS.time_column or None),
      time_columns=tuple(FLAGS.time_columns) if FLAGS.time_columns else None,
      time_format=FLAGS.time_format, fill_missing=FLAGS.fill_missing,
      allow_irregular_time=allow_irregular,
      separator="\t" if FLAGS.csv_separator in ("tab", "\\t") else FLAGS.csv_separator,
      decimal=FLAGS.decimal)
  print(f"reading {path}", flush=True)
  series = timeseries.read_csv(path, spec)
  split = timeseries.split_rows(
      len(series), train_end=FLAGS.train_end, val_end=FLAGS.val_end,
      train_fraction=FLAGS.train_fraction, val_fraction=FLAGS.val_fraction, default=jena.SPLIT)
  norm = timeseries.Normalization.fit(series.values[:split.train_end], series.columns)
  norm.check(series.values, series.columns)
  is_jena = canonical or pathlib.Path(path).name.startswith(jena.CSV_NAME)
  stem = re.sub(r"\W+", "_", pathlib.Path(path).name.split(".")[0])
  return Problem(experiment="jena_forecast" if is_jena else f"forecast_{stem}",
                 series=series, norm=norm, split=split,
                 unit=FLAGS.target_unit or _unit_of(FLAGS.target),
                 allow_irregular_time=allow_irregular)


def naive_apply(target_index: int) -> Callable:
  """The common-sense forecast: the window's last value of the target, <float32>[batch, 1]."""
  return lambda params, x: x[:, -1, target_index:target_index + 1]


def evaluate_naive(problem: Problem, batches, options: train.TrainOptions) -> dict:
  """The naive baseline's val and test MAE, written as a results.json like fit's."""
  workdir = pathlib.Path(options.workdir)
  if (workdir / "results.json").exists() and not options.overwrite:
    raise errors.UserError(f"{workdir} already holds a finished run; pass --overwrite to "
                           "replace it or choose another --workdir")
  files.make_dirs(workdir)
  start = time.time()
  apply_fn = naive_apply(problem.series.target_index)
  measure = lambda part: train.evaluate(
      apply_fn, {}, part, loss="mae", metrics=("mae",),
      target_unit=(problem.unit, problem.target_std))
  started = train.provenance.now()
  results = {"experiment": options.experiment, "model": options.model_name,
             "flags": dict(options.flags), "history": [], "best_epoch": [],
             "val": measure(batches.val()),
             "test": measure(batches.test()) if batches.test_steps else None,
             "seconds": time.time() - start,
             "config": {"loss": "mae", "metrics": ["mae"], "epochs": 0,
                        "batch_size": batches.batch_size, "validation_steps": batches.val_steps,
                        "architecture": "the window's last value of the target"},
             **problem.extra_results(batches),
             "provenance": train.provenance.environment(started)}
  train.write_results(workdir, results)
  print(f"naive: val MAE {results['val']['mae']:.4f} "
        f"({results['val'][f'mae_{problem.unit}']:.3f} {problem.unit}); wrote {workdir}",
        flush=True)
  return results


def plot_predictions(problem: Problem, batches, apply_fn, params, path, title: str,
                     with_naive: bool = True, name: str = "model") -> None:
  """Predicted (curve `name`, and the naive baseline's) against the true target over the
  first validation rows (~10 days)."""
  wanted = problem.rows_in_days(10)
  rows, x = [], []
  for end_rows, (batch_x, _, _) in zip(batches.rows("val"), batches.val()):
    rows.append(end_rows)
    x.append(batch_x[:len(end_rows)])
    if sum(map(len, rows)) >= wanted:
      break
  rows, x = np.concatenate(rows)[:wanted], np.concatenate(x)[:wanted]
  target_rows = rows + batches.delay
  t = problem.series.target_index
  true = problem.series.values[target_rows, t]
  last_seen = rows - batches.lookback + (batches.time_steps - 1) * batches.step
  naive = problem.denormalize(batches.data[last_seen, t])
  predicted = problem.denormalize(np.asarray(jax.jit(apply_fn)(params, x))[:, 0])
  times = None if problem.series.times is None else problem.series.times[target_rows]
  curves = [(name, predicted)] + ([("naive baseline", naive)] if with_naive else [])
  forecast_plots.predictions(true, curves, times, path, title=title, label=problem.label)


def plot_series(problem: Problem, workdir: pathlib.Path) -> None:
  """The lecture's plots of the target: the whole series and its first 10 days."""
  values = problem.series.values[:, problem.series.target_index]
  label = problem.label
  files.make_dirs(workdir)
  forecast_plots.series(values, problem.series.times, workdir / "target.png", label=label)
  forecast_plots.series(values, problem.series.times, workdir / "target_first_10_days.png",
                        label=label, first=problem.rows_in_days(10),
                        span=f"the first 10 days ({problem.rows_in_days(10)} rows)")


@dataclasses.dataclass(frozen=True)
class Plan:
  """One model's run, checked before anything is written."""
  model_name: str
  batches: windows.WindowBatches
  options: train.TrainOptions


def plan_model(problem: Problem, model_name: str, root: pathlib.Path) -> Plan:
  """The model's windows and options; a bad size or flag is a UserError here, not mid-run."""
  spec = MODELS[model_name]
  batches = problem.batches(spec.reverse)
  saved = FLAGS.epochs
  if not FLAGS["epochs"].present:
    FLAGS.epochs = spec.epochs  # the model's own default, recorded in its results.json
  try:
    options = train_flags.train_options(FLAGS, experiment=problem.experiment,
                                        model_name=model_name,
                                        workdir=str(root / model_name))
  finally:
    FLAGS.epochs = saved
  # --model is the comparison's; each run records its own.
  options = dataclasses.replace(options, flags={**options.flags, "model": model_name})
  return Plan(model_name, batches, options)


def build_model(model_name: str):
  """(model, dropout, recurrent_dropout) of a trained model, as the flags set them."""
  spec = MODELS[model_name]
  dropout = spec.dropout if FLAGS.dropout is None else FLAGS.dropout
  recurrent_dropout = (spec.recurrent_dropout if FLAGS.recurrent_dropout is None
                       else FLAGS.recurrent_dropout)
  lecture = {"activation": FLAGS.activation, "reset_after": FLAGS.reset_after,
             "head": FLAGS.head}
  model = layers.with_implementation(
      spec.build(FLAGS.units, dropout, recurrent_dropout, lecture), FLAGS.implementation)
  return model, dropout, recurrent_dropout


def run_model(problem: Problem, plan: Plan) -> dict:
  model_name, batches, options = plan.model_name, plan.batches, plan.options
  spec = MODELS[model_name]
  workdir = pathlib.Path(options.workdir)
  print(f"--- {model_name}: {batches.time_steps} steps x {batches.data.shape[1]} features, "
        f"{batches.steps_per_epoch} batches/epoch, {batches.val_steps} val, "
        f"{batches.test_steps} test", flush=True)
  if spec.build is None:
    results = evaluate_naive(problem, batches, options)
    apply_fn, params = naive_apply(problem.series.target_index), {}
  else:
    model, dropout, recurrent_dropout = build_model(model_name)
    fitted = train.fit(model, batches, loss="mae", metrics=("mae",), options=options,
                       target_unit=(problem.unit, problem.target_std),
                       extra_results=problem.extra_results(batches),
                       model_config={"units": FLAGS.units, "dropout": dropout,
                                     "recurrent_dropout": recurrent_dropout,
                                     "reverse": spec.reverse},
                       preprocessing=problem.preprocessing(batches))
    results, params = fitted.results, fitted.params
    apply_fn = lambda p, x: model.apply(p, x, training=False)
    if options.num_seeds > 1:  # params stacked over replicas: plot their mean forecast
      apply_one = apply_fn
      apply_fn = lambda p, x: jax.vmap(apply_one, in_axes=(0, None))(p, x).mean(axis=0)
  seeds = f", mean of {options.num_seeds} seeds" if options.num_seeds > 1 else ""
  name = model_name if spec.build is not None else "naive baseline"
  plot_predictions(problem, batches, apply_fn, params, workdir / "predictions.png",
                   title=f"{name}: forecasts {problem.horizon(batches.delay)} ahead, first "
                         f"validation rows{seeds}", with_naive=spec.build is not None,
                   name=name)
  return results


def main(argv):
  del argv
  train.check_names(FLAGS.model, list(MODELS), "model")
  for name in ("units",):
    if FLAGS[name].value < 1:
      raise errors.UserError(f"--{name} must be at least 1, got {FLAGS[name].value}")
  for name in ("dropout", "recurrent_dropout"):
    value = FLAGS[name].value
    if value is not None and not 0.0 <= value < 1.0:
      raise errors.UserError(f"--{name} must be in [0, 1), got {value}")
  if FLAGS.lookback >= 1 and FLAGS.step >= 1 and FLAGS.lookback % FLAGS.step:
    raise errors.UserError(f"--step={FLAGS.step} does not divide --lookback={FLAGS.lookback}")
  train_flags.check(FLAGS)  # the shared flags, before the CSV is read
  train_flags.set_up(FLAGS)  # before JAX's first computation (checking an implementation is one)
  train.check_models({name: build_model(name)[0] for name in FLAGS.model
                      if MODELS[name].build is not None}, FLAGS.implementation)
  problem = load_problem()
  root = pathlib.Path(FLAGS.workdir or os.path.join("runs", problem.experiment))
  train.check_workdir(root)
  # Every model's windows and flags, and its workdir (finished, interrupted, same flags?),
  # are checked before the workdir is touched; a resume takes the models as a whole.
  plans = [plan_model(problem, model_name, root) for model_name in FLAGS.model]
  runs = train.plan_runs({plan.model_name: plan.options for plan in plans}, list_flag="model")
  plans = [dataclasses.replace(plan, options=run.options) for plan, run in zip(plans, runs)]
  summary = []
  for plan, run in zip(plans, runs):
    if run.finished:
      print(f"--- {plan.model_name}: finished earlier with the same flags, reusing "
            f"{os.path.join(plan.options.workdir, 'results.json')}", flush=True)
      results = run.results
    else:
      results = run_model(problem, plan)
    summary.append((plan.model_name, results["val"]))
  plot_series(problem, root)
  print(f"\n| model | val MAE | val MAE ({problem.unit}) |\n|---|---|---|")
  for model_name, val in summary:
    print(f"| {model_name} | {val['mae']:.4f} | {val[f'mae_{problem.unit}']:.3f} |")
  print(f"\nwrote {root}; summarize with python -m experiments.summarize --workdir={root}")


if __name__ == "__main__":
  command.run(main)
