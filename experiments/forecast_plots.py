"""The experiments' forecasting figures (series, predictions) and summarize's bar chart."""
from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np

from rnn_jax.analysis.plots import _save_atomic, plt  # pylint: disable=protected-access


def series(values: np.ndarray, times: Optional[np.ndarray], path: os.PathLike, *,
           label: str, first: Optional[int] = None, span: Optional[str] = None) -> None:
  """The lecture's temperature plot: `values` <float>[rows] against time (or the row).

  `first` limits the plot to the first rows (the lecture's first 10 days: 1440 rows);
  `span` names them in the title.
  """
  values = values[:first]
  x = np.arange(len(values)) if times is None else times[:first]
  fig, ax = plt.subplots(figsize=(10, 4))
  ax.plot(x, values, linewidth=0.6 if first is None else 1.0)
  ax.set_xlabel("row" if times is None else "time")
  ax.set_ylabel(label)
  span = span or ("the whole series" if first is None else f"the first {len(values)} rows")
  ax.set_title(f"{label}: {span}")
  fig.autofmt_xdate()
  _save_atomic(fig, path)


def predictions(true: np.ndarray, predicted: Sequence[tuple[str, np.ndarray]],
                times: Optional[np.ndarray], path: os.PathLike, *, label: str,
                title: str = "") -> None:
  """True values <float>[n] and one or more predictions <float>[n] over the same rows."""
  x = np.arange(len(true)) if times is None else times
  fig, ax = plt.subplots(figsize=(10, 4))
  ax.plot(x, true, color="black", linewidth=1.0, label="true")
  for name, values in predicted:
    ax.plot(x, values, linewidth=1.0, label=name)
  ax.set_xlabel("row" if times is None else "time")
  ax.set_ylabel(label)
  ax.set_title(title)
  ax.legend()
  fig.autofmt_xdate()
  _save_atomic(fig, path)


def compare_bars(names: Sequence[str], values: Sequence[float], path: os.PathLike, *,
                 ylabel: str, baseline: Optional[float] = None,
                 baseline_label: str = "naive baseline", title: str = "") -> None:
  """One bar per model, and the baseline as a dashed horizontal line."""
  fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(names) + 2), 4.5))
  ax.bar(range(len(names)), values, color="tab:blue")
  ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
  if baseline is not None:
    ax.axhline(baseline, color="tab:red", linestyle="--", label=baseline_label)
    ax.legend()
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  _save_atomic(fig, path)
