"""One table of every run under a directory, and a bar chart of validation MAE per model.

  python -m experiments.summarize --workdir=runs/jena_forecast

Reads every `results.json` below --workdir, prints a markdown table (experiment, model,
best epoch, validation and test MAE in normalized units and in the target's unit,
seconds; also written to <workdir>/summary.md) and draws <workdir>/val_mae.png: one bar
per model, the naive baseline as a dashed line (one chart per experiment when the
directory holds several: val_mae_<experiment>.png). A run of --num_seeds > 1 shows
"mean ± std" over its replicas (and their bars the mean), and each replica's best epoch.
"""
from __future__ import annotations

import json
import pathlib
from typing import Optional

from rnn_jax import errors, plots_forecast, train
from rnn_jax.files import write_atomic

# --workdir is the experiments' shared flag (train.define_flags); here: where to search.
FLAGS = train.define_flags()

BASELINE = "naive"


def load_results(root: pathlib.Path) -> list[dict]:
  """Every results.json under `root`, each with its "path" added; the baseline first."""
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
    found.append({**results, "path": str(path)})
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
  if not isinstance(results["model"], str):
    raise errors.UserError(f"{path}: not a results file: model is {results['model']!r}, "
                           "not a name")


def _unit_mae(metrics: Optional[dict]) -> tuple[Optional[float], Optional[float], str]:
  """(mae, mae in the target's unit, unit) of a val/test dict; None where absent."""
  if not metrics:
    return None, None, ""
  for key, value in metrics.items():
    if key.startswith("mae_"):
      return metrics.get("mae"), value, key[len("mae_"):]
  return metrics.get("mae", metrics.get("loss")), None, ""


def _fmt(value: Optional[float], digits: int, std: Optional[float] = None) -> str:
  if value is None:
    return "-"
  return f"{value:.{digits}f}" + ("" if std is None else f" ± {std:.{digits}f}")


def _best_epoch(run: dict) -> str:
  best = run.get("best_epoch")
  if isinstance(best, list):  # one per replica of a --num_seeds run
    return ",".join(str(b) for b in best)
  return str(best or "-")


def table(runs: list[dict]) -> str:
  """The markdown table, one row per run."""
  lines = ["| experiment | model | best epoch | val MAE | val MAE (unit) | test MAE | "
           "test MAE (unit) | seconds |", "|---|---|---|---|---|---|---|---|"]
  for r in runs:
    val, val_unit, unit = _unit_mae(r.get("val"))
    test, test_unit, _ = _unit_mae(r.get("test"))
    std = r.get("std") or {}  # over the replicas of a --num_seeds run
    val_std, val_unit_std, _ = _unit_mae(std.get("val"))
    test_std, test_unit_std, _ = _unit_mae(std.get("test"))
    unit = f" {unit}" if unit else ""
    lines.append(
        f"| {r.get('experiment', '-')} | {r['model']} | {_best_epoch(r)} | "
        f"{_fmt(val, 4, val_std)} | "
        f"{_fmt(val_unit, 3, val_unit_std)}{unit if val_unit is not None else ''} | "
        f"{_fmt(test, 4, test_std)} | "
        f"{_fmt(test_unit, 3, test_unit_std)}{unit if test_unit is not None else ''} | "
        f"{_fmt(r.get('seconds'), 0)} |")
  return "\n".join(lines)


def charts(runs: list[dict], root: pathlib.Path) -> list[pathlib.Path]:
  """A bar chart of validation MAE (target units when known) per experiment."""
  experiments = sorted({r.get("experiment", "") for r in runs})
  written = []
  for experiment in experiments:
    group = [r for r in runs if r.get("experiment", "") == experiment]
    values = [_unit_mae(r.get("val")) for r in group]
    in_unit = all(v[1] is not None for v in values)
    pick = (lambda v: v[1]) if in_unit else (lambda v: v[0])
    unit = values[0][2] if in_unit else "normalized"
    baseline = next((pick(v) for r, v in zip(group, values) if r["model"] == BASELINE), None)
    bars = [(r["model"], pick(v)) for r, v in zip(group, values)
            if r["model"] != BASELINE and pick(v) is not None]
    name = "val_mae.png" if len(experiments) == 1 else f"val_mae_{experiment}.png"
    path = root / name
    plots_forecast.compare_bars([m for m, _ in bars], [v for _, v in bars], path,
                                ylabel=f"validation MAE ({unit})", baseline=baseline,
                                title=f"{experiment}: validation MAE per model")
    written.append(path)
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
  errors.run(main)
