"""What a run reports: results.json, its per-replica summary, and the progress lines."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from rnn_jax import distributed
from rnn_jax.io import files


def say(line: str) -> None:
  """A line on stdout from the primary process (the experiments' progress channel)."""
  if distributed.is_primary():
    print(line, flush=True)


def write_results(workdir: os.PathLike, results: Mapping[str, Any]) -> Path:
  """Writes `<workdir>/results.json` atomically; returns its path."""
  path = Path(workdir) / "results.json"
  files.make_dirs(path.parent)
  files.write_atomic(path, json.dumps(results, indent=2) + "\n")
  return path


def replica_results(replicas: Sequence[dict], tests: Sequence[Optional[dict]],
                    seeds: Sequence[int]) -> dict:
  """results.json's history, best_epoch, val and test: the run's own for one seed; for
  several, the means over replicas, plus "replicas", "mean" and "std" (ddof=1).

  "best_epoch" is always a list, one epoch per replica ([3] for one seed); each replica's
  own entry under "replicas" holds its number.
  """
  each = [{"seed": seed, "history": rep["history"], "best_epoch": rep["best_epoch"],
           "val": rep["best_val"], "test": test}
          for seed, rep, test in zip(seeds, replicas, tests)]
  if len(seeds) == 1:
    return {**{k: v for k, v in each[0].items() if k != "seed"},
            "best_epoch": [each[0]["best_epoch"]]}
  # val (and best_epoch) is None for a run stopped before its first epoch ended.
  reduced = lambda reduce, parts: None if parts[0] is None else {
      k: float(reduce([part[k] for part in parts])) for k in parts[0]}
  summary = lambda reduce: {
      "best_epoch": (None if each[0]["best_epoch"] is None
                     else float(reduce([r["best_epoch"] for r in each]))),
      "val": reduced(reduce, [r["val"] for r in each]),
      "test": reduced(reduce, [r["test"] for r in each])}
  mean = summary(np.mean)
  std = summary(lambda values: np.std(values, ddof=1))
  history = [mean_rows(rows) for rows in zip(*(r["history"] for r in each))]
  return {"history": history, "best_epoch": [r["best_epoch"] for r in each],
          "val": mean["val"], "test": mean["test"], "replicas": each, "mean": mean, "std": std}


def mean_rows(rows: Sequence[Mapping[str, float]]) -> dict:
  """The mean of each entry of history rows (of one epoch, one per replica)."""
  return {k: (rows[0][k] if k == "epoch" else float(np.mean([row[k] for row in rows])))
          for k in rows[0]}


def format_seconds(seconds: float) -> str:
  seconds = int(round(seconds))
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def format_metrics(values: Optional[Mapping[str, float]]) -> str:
  return " - ".join(f"{k}: {v:.4g}" for k, v in (values or {}).items())


def progress_line(row: Mapping[str, float], epochs: int, eta: float, num_seeds: int = 1) -> str:
  values = {k: v for k, v in row.items() if k not in ("epoch", "seconds", "steps_per_s")}
  return (f"Epoch {row['epoch']}/{epochs} - {row['seconds']:.1f}s - "
          f"{row['steps_per_s']:.1f} steps/s - ETA {format_seconds(eta)} - "
          + format_metrics(values) + (f" (mean of {num_seeds} seeds)" if num_seeds > 1 else ""))
