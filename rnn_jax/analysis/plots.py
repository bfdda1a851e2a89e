"""Training curves, saved as PNG and SVG (matplotlib's Agg backend, no display needed)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
from matplotlib.ticker import MaxNLocator  # pylint: disable=g-import-not-at-top

# How each loss is named on an axis.
LOSS_NAMES = {"mae": "MAE", "mse": "MSE", "bce_logits": "binary cross-entropy"}

from rnn_jax.io import files  # pylint: disable=g-import-not-at-top


def _save_atomic(fig, path: os.PathLike) -> None:
  """Saves `path` (a .png) and the same figure as .svg beside it, each through a
  temporary file and a rename; a write error is one `UserError` line (rnn_jax.io.files)."""
  path = Path(path)
  try:
    for target in (path, path.with_suffix(".svg")):
      files.save_figure(fig, target, close=False, dpi=100, bbox_inches="tight")
  finally:
    plt.close(fig)


def _save_png_and_svg(fig, stem: os.PathLike) -> None:
  """<stem>.png and <stem>.svg, each written atomically."""
  _save_atomic(fig, Path(str(stem) + ".png"))


def epoch_axis(ax) -> None:
  """Whole epochs on the x axis."""
  ax.set_xlabel("Epoch")
  ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def history(history: Sequence[Mapping[str, float]], path: os.PathLike, title: str = "", *,
            loss: Optional[str] = None, best_epochs: Sequence[Optional[int]] = ()) -> None:
  """Training and validation loss per epoch (and accuracy beside it when there is one),
  with the best epoch(s) marked; `loss` names the loss on the axis (e.g. "mse")."""
  panels = ["loss"] + (["accuracy"] if history and "accuracy" in history[0] else [])
  fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
  epochs = [h["epoch"] for h in history]
  best = sorted({b for b in best_epochs if b is not None})
  for ax, name in zip(axes[0], panels):
    label = f"loss ({LOSS_NAMES.get(loss, loss)})" if name == "loss" and loss else name
    ax.plot(epochs, [h[name] for h in history], "bo", label=f"Training {label}")
    if history and f"val_{name}" in history[0]:
      ax.plot(epochs, [h[f"val_{name}"] for h in history], "b", label=f"Validation {label}")
    for i, epoch in enumerate(best):
      ax.axvline(epoch, color="tab:green", linestyle=":",
                 label=None if i else ("best epoch" if len(best) == 1 else "best epochs"))
    ax.set_title(f"Training and validation {name}" + (f" ({title})" if title else ""))
    epoch_axis(ax)
    ax.set_ylabel(label[0].upper() + label[1:])
    ax.legend()
  _save_atomic(fig, path)


def compare(curves: Mapping[str, Sequence[float]], path: os.PathLike, *, ylabel: str,
            title: str = "", baseline: float | None = None,
            baseline_label: str = "predict the mean") -> None:
  """One line per named curve (e.g. validation MSE per epoch of several models)."""
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for name, values in curves.items():
    ax.plot(range(1, len(values) + 1), values, marker="o", markersize=3, label=name)
  if baseline is not None:
    ax.axhline(baseline, color="gray", linestyle="--", label=baseline_label)
  ax.set_yscale("log")
  epoch_axis(ax)
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.legend()
  _save_atomic(fig, path)


def gradient_profiles(report: Mapping, stem: os.PathLike) -> None:
  """||dL/dh_t|| against T - t, one line per model at init (dashed) and trained (solid);
  saved as <stem>.png and <stem>.svg."""
  fig, ax = plt.subplots(figsize=(7.5, 4.8))
  for i, (name, entry) in enumerate(report["models"].items()):
    color = f"C{i}"
    for stage, style in (("init", "--"), ("trained", "-")):
      if stage in entry:
        norms = entry[stage]["d_states"]
        back = list(range(len(norms) - 1, -1, -1))  # T - t
        ax.plot(back, norms, style, color=color, label=f"{name} ({stage})")
  ax.set_yscale("log")
  ax.set_xlabel("T - t (steps back from the loss)")
  ax.set_ylabel("||dL/dh_t||")
  ax.set_title(f"How far back the gradient reaches (adding problem, T={report['seq_len']})")
  ax.legend(fontsize=8)
  _save_png_and_svg(fig, stem)


def clipping(runs: Mapping, stem: os.PathLike) -> None:
  """Training loss per epoch of the clipped and unclipped runs (log scale); a diverged
  run is marked where it stopped. Saved as <stem>.png and <stem>.svg."""
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for name in ("unclipped", "clipped"):
    run = runs[name]
    if run["outcome"] == "trained":
      ax.plot([h["epoch"] for h in run["history"]], [h["loss"] for h in run["history"]],
              marker="o", label=f"{name}: test MSE {run['test_mse']:.3g}")
    else:
      ax.plot([], [], "rx", label=f"{name}: diverged (NaN guard)")
  ax.axhline(runs["mean_predictor_mse"], color="gray", linestyle="--", label="predict the mean")
  ax.set_yscale("log")
  ax.set_xlabel("Epoch")
  ax.set_ylabel("Training MSE")
  ax.set_title("Gradient clipping on an exploding relu RNN (SGD)")
  ax.legend()
  _save_png_and_svg(fig, stem)
