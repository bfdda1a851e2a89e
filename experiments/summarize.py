"""One table per experiment of every run under a directory, and a bar chart of each.

  python -m experiments.summarize --workdir=runs                  # every experiment's runs
  python -m experiments.summarize --workdir=runs/jena_forecast

Reads every `results.json` below --workdir and prints, per experiment, a markdown table
with that experiment's own metrics, each named: accuracy and loss (binary cross-entropy)
for IMDB, MSE for the adding problem, MAE normalized and in the target's unit for
forecasting; then the best epoch, seconds and the run's directory (relative to
--workdir), so that two runs of one model are told apart. The tables also go to
<workdir>/summary.md. Each experiment gets a bar chart of its headline validation metric
(accuracy, MSE, or MAE in the target's unit), the naive baseline as a dashed line:
<workdir>/val_<metric>.png, or val_<metric>_<experiment>.png when there are several
experiments. A run of --num_seeds > 1 shows "mean ± std" over its replicas (its bar the
mean) and each replica's best epoch.
"""
from __future__ import annotations

import json
import pathlib
from typing import Optional

from absl import flags

from experiments import command, forecast_plots, train_flags
from rnn_jax import errors
from rnn_jax.io.files import write_atomic

# --workdir is the experiments' shared flag (train_flags.define_flags); here: where to search.
FLAGS = train_flags.define_flags()
flags.declare_key_flag("workdir")
FLAGS["workdir"].help = "The directory to search for results.json files (default: runs)."

BASELINE = "naive"
# The loss of results written before results.json recorded it ("config": {"loss": ...}).
LOSS_OF_EXPERIMENT = {"adding_problem": "mse", "imdb_sentiment": "bce_logits"}
LOSS_LABELS = {"mse": "MSE", "mae": "MAE", "bce_logits": "loss (BCE)"}


def load_results(root: pathlib.Path) -> list[dict]:
  """Every results.json under `root`, each with "path" (the file) and "run" (its
  directory relative to `root`) added; grouped by experiment, the baseline first."""
  found = []
  for path in sorted(root.rglob("results.json")):
    try:
      results = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
      raise errors.UserError(f"{path}: not a results file: not UTF-8 text") from None
    except (OSError, ValueError) as e:
      raise errors.UserError(f"{path}: not a results file: {e}") from None
    if not isinstance(results, dict) or "model" not in results:
      raise errors.UserError(f"{path}: not a results file: no 'model' key")
    _check_numbers(path, results)
    found.append({**results, "path": str(path),
                  "run": str(path.parent.relative_to(root))})
  return sorted(found, key=lambda r: (str(r.get("experiment", "")), r["model"] != BASELINE))


def _is_number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_numbers(path: pathlib.Path, results: dict) -> None:
  """The entries the table reads hold numbers (or nothing): else a one-line UserError."""
  def need(ok, key, value):
    if not ok:
      raise errors.UserError(f"{path}: not a results file: {key} is {value!r}, not a number")
  for part in ("val", "test"):
    metrics = results.get(part)
    need(metrics is None or isinstance(metrics, dict), part, metrics)
    for key, value in (metrics or {}).items():
      need(value is None or _is_number(value), f"{part}.{key}", value)
  for part in ("val", "test"):
    metrics = (results.get("std") or {}).get(part) if isinstance(results.get("std"), dict) else None
    for key, value in (metrics or {}).items():
      need(value is None or _is_number(value), f"std.{part}.{key}", value)
  need(results.get("seconds") is None or _is_number(results["seconds"]), "seconds",
       results.get("seconds"))
  config = results.get("config")
  if config is not None and not isinstance(config, dict):
    raise errors.UserError(f"{path}: not a results file: config is {config!r}, not a mapping")
  if config and not isinstance(config.get("loss", ""), (str, type(None))):
    raise errors.UserError(f"{path}: not a results file: config.loss is {config['loss']!r}, "
                           "not a name")
  best = results.get("best_epoch")
  for value in (best if isinstance(best, list) else [best]):
    need(value is None or isinstance(value, int) and not isinstance(value, bool), "best_epoch",
         best)
  if not isinstance(results["model"], str):
    raise errors.UserError(f"{path}: not a results file: model is {results['model']!r}, "
                           "not a name")


def loss_of(run: dict) -> str:
  """The run's loss function: as recorded, else the experiment's, else MAE (forecasting)."""
  recorded = (run.get("config") or {}).get("loss")
  return recorded or LOSS_OF_EXPERIMENT.get(str(run.get("experiment")), "mae")


def columns(runs: list[dict]) -> list[tuple[str, str]]:
  """[(key in val/test, label)] of an experiment's runs, headline first: accuracy, the
  loss (unless a metric repeats it), MAE, then MAE in the target's unit."""
  keys = []
  for run in runs:
    for part in (run.get("val"), run.get("test")):
      keys += [k for k in (part or {}) if k not in keys]
  loss = loss_of(runs[0])
  units = [k[len("mae_"):] for k in keys if k.startswith("mae_")]
  labels = {"accuracy": "accuracy", "loss": LOSS_LABELS.get(loss, f"loss ({loss})"),
            "mae": "MAE (normalized)" if units else "MAE",
            **{f"mae_{unit}": f"MAE ({unit})" for unit in units}}
  if loss in keys and "loss" in keys:  # e.g. an MAE loss beside the MAE metric
    keys.remove("loss")
  order = ["accuracy", "loss", "mae"] + [f"mae_{unit}" for unit in units]
  return ([(k, labels[k]) for k in order if k in keys]
          + [(k, k) for k in keys if k not in order])


def _fmt(value: Optional[float], std: Optional[float] = None) -> str:
  if value is None:
    return "-"
  return f"{value:.4g}" + ("" if std is None else f" ± {std:.2g}")


def _best_epoch(run: dict) -> str:
  best = run.get("best_epoch")
  best = best if isinstance(best, list) else [best]  # a number in older results
  return ",".join(str(b) for b in best if b is not None) or "-"


def experiment_table(runs: list[dict]) -> str:
  """The markdown table of one experiment's runs, one row per run."""
  cols = columns(runs)
  head = (["model", "best epoch"] + [f"val {label}" for _, label in cols]
          + [f"test {label}" for _, label in cols] + ["seconds", "run"])
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in runs:
    std = r.get("std") or {}  # over the replicas of a --num_seeds run
    cells = [r["model"], _best_epoch(r)]
    for part in ("val", "test"):
      values, stds = r.get(part) or {}, std.get(part) or {}
      cells += [_fmt(values.get(key), stds.get(key)) for key, _ in cols]
    seconds = r.get("seconds")
    cells += ["-" if seconds is None else f"{seconds:.0f}", r.get("run", r.get("path", "-"))]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def groups(runs: list[dict]) -> dict[str, list[dict]]:
  """The runs by experiment, in `load_results`'s order."""
  out: dict[str, list[dict]] = {}
  for run in runs:
    out.setdefault(str(run.get("experiment", "-")), []).append(run)
  return out


def table(runs: list[dict]) -> str:
  """Every experiment's table under its name as a heading."""
  return "\n\n".join(f"## {experiment}\n\n{experiment_table(group)}"
                     for experiment, group in groups(runs).items())


def charts(runs: list[dict], root: pathlib.Path) -> list[pathlib.Path]:
  """Per experiment, a bar chart of its headline validation metric per model (the
  naive baseline as a line); returns the PNGs written (an SVG lies beside each). An
  experiment whose runs record no metric gets its table and no chart."""
  by_experiment = groups(runs)
  written = []
  for experiment, group in by_experiment.items():
    cols = columns(group)
    if not cols:  # runs without a validation or test metric (an experiment of your own)
      continue
    key, label = cols[-1] if cols[-1][0].startswith("mae_") else cols[0]
    value = lambda r: (r.get("val") or {}).get(key)
    baseline = next((value(r) for r in group if r["model"] == BASELINE), None)
    bars = [(r["model"], value(r)) for r in group
            if r["model"] != BASELINE and value(r) is not None]
    stem = "mae" if key.startswith("mae") else ("mse" if label == "MSE" else key)
    name = f"val_{stem}" + ("" if len(by_experiment) == 1 else f"_{experiment}") + ".png"
    forecast_plots.compare_bars([m for m, _ in bars], [v for _, v in bars], root / name,
                                ylabel=f"validation {label}", baseline=baseline,
                                title=f"{experiment}: validation {label} per model")
    written.append(root / name)
  return written


def main(argv):
  del argv
  root = pathlib.Path(FLAGS.workdir or "runs")
  if not root.is_dir():
    raise errors.UserError(f"--workdir={root}: no such directory")
  runs = load_results(root)
  if not runs:
    raise errors.UserError(f"--workdir={root}: no results.json below it")
  text = table(runs)
  print(text)
  write_atomic(root / "summary.md", text + "\n")
  for path in charts(runs, root):
    print(f"wrote {path}")


if __name__ == "__main__":
  command.run(main)
