"""A model's architecture as data: layer stacks <-> JSON-able dicts.

  config = serialize.to_config(model)        # {"class": "Sequential", "layers": [...]}
  model = serialize.from_config(config)      # the same layers, settings and cells

Every layer of `rnn_jax.layers` is a frozen dataclass of its settings, so a layer is
written as {"class": <its name>, <setting>: <value>, ...}. A cell is written by its
registered name (`rnn_jax.cells.CELLS`) and the settings its factory was called with,
e.g. {"cell": "gru", "activation": "tanh", "recurrent_activation": "sigmoid",
"use_bias": true, "reset_after": true}; an activation by its name in
`rnn_jax.activations`. A cell of your own is written by where it lives,
{"cell": "your.module:name"}, when it is an attribute of an importable module (not
`__main__`): loading imports that module again. Anything else (a cell made in a script
or a function, an activation function without a name, a layer class of your own) cannot
be rebuilt from data: `to_config` raises `NotSerializable` naming it.

`save_model` / `load_model` write and read `model.json`: the config plus what `init`
needs to rebuild the parameters' shapes (`input_shape` without the batch axis,
`input_dtype`) and the `compute_dtype` the run trained with.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import os
import sys
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import jax.numpy as jnp

from rnn_jax import activations, cells, layers
from rnn_jax.errors import UserError
from rnn_jax.precision import COMPUTE_DTYPES

# model.json's format; 2 adds "files", the sizes and SHA-256 of preprocessing.json and
# vocabulary.txt. Runs of format 1 load too.
FORMAT = "rnn_jax.model/2"
FORMATS = ("rnn_jax.model/1", FORMAT)
LAYERS = {cls.__name__: cls for cls in (layers.Dense, layers.Maxout, layers.Embedding,
                                        layers.Flatten, layers.Dropout, layers.RNN,
                                        layers.Bidirectional, layers.Sequential)}
_ACTIVATION_SETTINGS = ("activation", "recurrent_activation")


class NotSerializable(ValueError):
  """The model holds something that cannot be written as data."""


def _activation_name(value, where: str):
  if value is None or isinstance(value, str):
    return value
  for name in activations.NAMES:
    if activations.get(name) is value:
      return name
  raise NotSerializable(f"{where}: the activation {value!r} has no name in "
                        f"rnn_jax.activations ({', '.join(activations.NAMES)}); pass it by name")


def _import_path(cell) -> Optional[str]:
  """"module:attribute" of an importable module (not __main__) that holds `cell` itself."""
  modules = {getattr(cell, "__module__", None)}
  for function in ("step", "init", "initial_carry"):
    modules.add(getattr(getattr(cell, function, None), "__module__", None))
  for module_name in sorted(m for m in modules if isinstance(m, str)):
    module = sys.modules.get(module_name)
    if module is None or module_name == "__main__" or module_name.startswith("rnn_jax."):
      continue
    for attribute, value in vars(module).items():
      if value is cell and not attribute.startswith("_"):
        return f"{module_name}:{attribute}"
  return None


def _imported_cell(path: str):
  module_name, attribute = path.split(":", 1)
  try:
    return getattr(importlib.import_module(module_name), attribute)
  except (ImportError, AttributeError) as e:
    raise ValueError(f"model config: the cell {path!r} cannot be imported ({e}); make its "
                     "module importable (e.g. on PYTHONPATH)") from e


def cell_config(cell, where: str = "cell") -> dict:
  """{"cell": name, **settings} of a registered cell; {"cell": "module:attribute"} of a
  cell of your own held by an importable module."""
  name = getattr(cell, "name", None)
  config = getattr(cell, "config", None)
  if name not in cells.CELLS or config is None:
    path = _import_path(cell)
    if path is not None:
      return {"cell": path}
    raise NotSerializable(
        f"{where}: {type(cell).__name__} is not a registered cell (rnn_jax.cells.CELLS: "
        f"{', '.join(cells.CELLS)}) nor an attribute of an importable module, so the model "
        "cannot be rebuilt from model.json; rebuild it in code and load the parameters with "
        "rnn_jax.load(run, model=...)")
  out = {"cell": name}
  for key, value in config:
    out[key] = _activation_name(value, f"{where}.{key}") if key in _ACTIVATION_SETTINGS else value
  return out


def to_config(layer, where: str = "model") -> dict:
  """The JSON-able config of a layer or `Sequential`; `NotSerializable` if it has no such form."""
  cls = type(layer)
  if LAYERS.get(cls.__name__) is not cls:
    raise NotSerializable(f"{where}: {cls.__module__}.{cls.__name__} is not an rnn_jax layer "
                          f"({', '.join(LAYERS)})")
  out = {"class": cls.__name__}
  for field in dataclasses.fields(layer):
    value = getattr(layer, field.name)
    here = f"{where}.{field.name}"
    if field.name == "layers":
      value = [to_config(sub, f"{where}.layers[{i}]") for i, sub in enumerate(value)]
    elif field.name == "cell":
      value = cell_config(value, here)
    elif field.name in ("layer", "backward_layer"):
      value = None if value is None else to_config(value, here)
    elif field.name in _ACTIVATION_SETTINGS:
      value = _activation_name(value, here)
    elif not (value is None or isinstance(value, (bool, int, float, str))):
      raise NotSerializable(f"{here}: {value!r} is not a JSON value")
    out[field.name] = value
  return out


def from_config(config: Mapping[str, Any]):
  """The layer (or `Sequential`) that `to_config` wrote."""
  config = dict(config)
  name = config.pop("class")
  if name not in LAYERS:
    raise ValueError(f"model config: unknown layer class {name!r} (known: {', '.join(LAYERS)})")
  if name == "Sequential":
    return layers.Sequential([from_config(c) for c in config["layers"]])
  for key in ("layer", "backward_layer"):
    if config.get(key) is not None:
      config[key] = from_config(config[key])
  if "cell" in config:
    settings = dict(config["cell"])
    cell_name = settings.pop("cell")
    if ":" in cell_name:
      config["cell"] = _imported_cell(cell_name)
      return LAYERS[name](**config)
    if cell_name not in cells.CELLS:
      raise ValueError(f"model config: unknown cell {cell_name!r} (known: {', '.join(cells.CELLS)})")
    config["cell"] = cells.CELLS[cell_name](**settings)
  return LAYERS[name](**config)


def save_model(path: os.PathLike, model, *, input_shape: Sequence[int], input_dtype: str,
               compute_dtype: str = "float32", extra: Optional[Mapping[str, Any]] = None) -> Path:
  """Writes `model.json` (atomically); raises `NotSerializable` before writing anything.
  `model` None writes the record without the architecture."""
  from rnn_jax.io import checkpoints  # orbax: only when writing
  record = {"format": FORMAT, "model": None if model is None else to_config(model),
            "input_shape": [int(d) for d in input_shape], "input_dtype": str(input_dtype),
            "compute_dtype": str(compute_dtype), **(extra or {})}
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  checkpoints.write_atomic(path, json.dumps(record, indent=2) + "\n")
  return path


def read_json_object(path: os.PathLike, what: str, data: Optional[bytes] = None) -> dict:
  """The JSON object in `path` (or in `data`, its bytes when already read); a missing,
  unreadable, truncated or non-object file is one `UserError` naming it and `what` it
  should be."""
  path = Path(path)
  try:
    text = (path.read_bytes() if data is None else data).decode("utf-8")
  except FileNotFoundError:
    raise UserError(f"{path}: no such file (the run needs {what})") from None
  except UnicodeDecodeError:
    raise UserError(f"{path}: not {what}: not UTF-8 text") from None
  except OSError as e:
    raise UserError(f"{path}: cannot read: {e.strerror or e}") from None
  try:
    value = json.loads(text)
  except ValueError as e:
    raise UserError(f"{path}: not {what}: not valid JSON, truncated or damaged? ({e})") from None
  if not isinstance(value, dict):
    raise UserError(f"{path}: not {what}: a JSON {type(value).__name__}, not an object")
  return value


def _check_record(path: Path, record: dict) -> None:
  """The fields of model.json that `load` reads, each of its type: else a `UserError`."""
  def need(ok: bool, key: str, what: str):
    if not ok:
      raise UserError(f"{path}: not an rnn_jax model file: {key!r} is "
                      f"{record.get(key, '(missing)')!r}, not {what}")
  shape = record.get("input_shape")
  need(isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool)
                                       and d >= 0 for d in shape), "input_shape",
       "a list of sizes")
  try:
    dtype_ok = isinstance(record.get("input_dtype"), str) and bool(jnp.dtype(record["input_dtype"]))
  except TypeError:
    dtype_ok = False
  need(dtype_ok, "input_dtype", "a dtype's name")
  need(record.get("compute_dtype", "float32") in COMPUTE_DTYPES, "compute_dtype",
       f"one of {', '.join(COMPUTE_DTYPES)}")
  seeds = record.get("num_seeds", 1)
  need(isinstance(seeds, int) and not isinstance(seeds, bool) and seeds >= 1, "num_seeds",
       "a positive integer")
  need("model" in record and (record["model"] is None or isinstance(record["model"], dict)),
       "model", "a layer's config (or null)")
  if record["format"] != FORMATS[0]:  # since format 2: the other run files' sizes and sums
    manifest = record.get("files")
    need(isinstance(manifest, dict) and all(
        isinstance(v, dict) and isinstance(v.get("bytes"), int)
        and isinstance(v.get("sha256"), str) for v in manifest.values()), "files",
         "the run files' sizes and checksums")


def load_model(path: os.PathLike) -> tuple[Any, dict]:
  """(model, the whole record of model.json), checked: a file that is not one (truncated,
  another JSON, another format, a field of another type, an architecture that cannot be
  rebuilt) is one `UserError` naming it."""
  path = Path(path)
  record = read_json_object(path, "an rnn_jax model file")
  if record.get("format") not in FORMATS:
    raise UserError(f"{path}: not an rnn_jax model file (format {record.get('format')!r}, "
                    f"expected {FORMAT!r})")
  _check_record(path, record)
  if record["model"] is None:
    return None, record
  try:
    return from_config(record["model"]), record
  except (ValueError, TypeError, KeyError, AttributeError) as e:
    raise UserError(f"{path}: its architecture ('model') cannot be rebuilt: "
                    f"{type(e).__name__}: {e}") from None
