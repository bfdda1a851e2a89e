"""How a run was made, for results.json: software versions, the commit, the devices, the
times, and a model's architecture as plain JSON.

  results["provenance"] = {"versions": {...}, "git": {"commit": ..., "dirty": ...},
                           "devices": {...}, "started": ISO time, "finished": ISO time}
  results["config"]["architecture"] = architecture(model)  # = model.json's "model"
"""
from __future__ import annotations

import dataclasses
import datetime
import functools
import importlib.metadata
import platform
import subprocess
from pathlib import Path
from typing import Any, Optional

import jax

_PACKAGE_DIR = Path(__file__).resolve().parents[1]  # rnn_jax/


def now() -> str:
  """The current time, ISO 8601 in UTC to the second."""
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def versions() -> dict:
  """Python's and the numeric stack's versions (None for a package not installed)."""
  import rnn_jax  # pylint: disable=import-outside-toplevel
  out = {"python": platform.python_version(), "rnn_jax": rnn_jax.__version__}
  for name in ("jax", "jaxlib", "numpy", "optax"):
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      out[name] = None
  return out


@functools.lru_cache(maxsize=None)
def git_state(directory: Path = _PACKAGE_DIR) -> Optional[dict]:
  """{"commit": sha, "dirty": whether tracked files differ from it} of the checkout that
  holds rnn_jax, or None when rnn_jax is not in a git checkout (an installed wheel)."""
  def git(*args) -> Optional[str]:
    try:
      done = subprocess.run(["git", "-C", str(directory), *args], capture_output=True,
                            text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
      return None
    return done.stdout.strip() if done.returncode == 0 else None
  commit = git("rev-parse", "HEAD")
  if not commit:
    return None
  status = git("status", "--porcelain", "--untracked-files=no")
  return {"commit": commit, "dirty": None if status is None else bool(status)}


def devices() -> dict:
  """The devices JAX computes on: platform, kind and count, per process and in all."""
  local = jax.local_devices()
  return {"platform": local[0].platform, "kind": local[0].device_kind,
          "local": len(local), "global": jax.device_count(), "processes": jax.process_count()}


def backends(model: Any, compute_dtype: str = "float32") -> list:
  """Which backend (`rnn_jax.backends`) computes each recurrent layer of `model` in
  training on this platform: [{"layer": "model.layers[1].forward", "cell": "lstm",
  "implementation": "auto", "backend": "per_gate"}, ...]."""
  from rnn_jax import layers  # pylint: disable=import-outside-toplevel
  return [{"layer": where, "cell": getattr(layer.cell, "name", type(layer.cell).__name__),
           "implementation": getattr(layer.implementation, "name", layer.implementation),
           "backend": layer.backend(compute_dtype).name}
          for where, layer in layers.recurrent_layers(model)]


def environment(started: str) -> dict:
  """results.json's "provenance", finished now."""
  return {"versions": versions(), "git": git_state(), "devices": devices(),
          "started": started, "finished": now()}


def architecture(layer: Any) -> Any:
  """A layer (a frozen dataclass, e.g. Sequential) as JSON. A model of rnn_jax layers and
  registered cells: `rnn_jax.io.serialize.to_config`'s config, the same as model.json's
  "model" ({"class": ..., settings..., "cell": {"cell": name, settings...}}). Otherwise a
  description that cannot be rebuilt from: {"type": ..., settings...}, cells by their
  name, functions by theirs."""
  from rnn_jax.io import serialize  # pylint: disable=import-outside-toplevel
  try:
    return serialize.to_config(layer)
  except serialize.NotSerializable:
    return _described(layer)


def _described(layer: Any) -> Any:
  if hasattr(layer, "step") and hasattr(layer, "initial_carry"):  # a cell
    return getattr(layer, "name", type(layer).__name__)
  if dataclasses.is_dataclass(layer) and not isinstance(layer, type):
    return {"type": type(layer).__name__,
            **{f.name: _described(getattr(layer, f.name)) for f in dataclasses.fields(layer)}}
  if isinstance(layer, (list, tuple)):
    return [_described(item) for item in layer]
  if isinstance(layer, dict):
    return {str(k): _described(v) for k, v in layer.items()}
  if layer is None or isinstance(layer, (bool, int, float, str)):
    return layer
  if callable(layer):
    return getattr(layer, "__name__", repr(layer))
  return getattr(layer, "name", repr(layer))
