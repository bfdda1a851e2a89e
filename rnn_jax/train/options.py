"""A run's options, `TrainOptions`, and the rules that every setting of a run must meet."""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Callable, Mapping, Optional

from rnn_jax.train import optim
from rnn_jax.precision import COMPUTE_DTYPES

# Settings (recorded flags) that may differ between a run and its resumption.
RESUMABLE_FLAGS = ("resume", "overwrite", "epochs", "workdir", "num_devices", "implementation",
                   "coordinator_address", "num_processes", "process_id", "log_every_steps")


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def _positive_int(value) -> bool:
  return _is_int(value) and value >= 1


def _optional(ok):
  return lambda value: value is None or ok(value)


def _positive_number(value) -> bool:
  return _is_number(value) and math.isfinite(value) and value > 0


# (setting, test, what it must be): the one list of rules behind `TrainOptions` and any
# command line's check of the same settings (`first_problem`), in this order.
_RULES = (
    ("epochs", _positive_int, "a positive integer"),
    ("batch_size", _positive_int, "a positive integer"),
    ("steps_per_epoch", _optional(_positive_int), "a positive integer"),
    ("validation_steps", _optional(_positive_int), "a positive integer"),
    ("num_devices", _optional(_positive_int), "a positive integer"),
    ("num_seeds", _positive_int, "a positive integer"),
    ("num_processes", _positive_int, "a positive integer"),
    ("log_every_steps", lambda v: _is_int(v) and v >= 0, "0 or more"),
    ("validation_split", lambda v: _is_number(v) and 0.0 <= v < 1.0, "in [0, 1)"),
    # A number, or (TrainOptions only) an optax schedule, checked by `fit` over its steps.
    ("learning_rate", lambda v: callable(v) or _positive_number(v), "positive"),
    ("clip_norm", _optional(_positive_number), "positive"),
    ("warmup_steps", lambda v: _is_int(v) and v >= 0, "at least 0"),
    ("lr_decay_rate", lambda v: _is_number(v) and 0.0 < v <= 1.0, "in (0, 1]"),
    ("early_stopping_patience", _optional(_positive_int), "a positive integer"),
    ("optimizer", lambda v: v in optim.OPTIMIZERS, f"one of {', '.join(optim.OPTIMIZERS)}"),
    ("lr_schedule", lambda v: v in optim.SCHEDULES, f"one of {', '.join(optim.SCHEDULES)}"),
    ("compute_dtype", lambda v: v in COMPUTE_DTYPES, f"one of {', '.join(COMPUTE_DTYPES)}"),
)


def _seed_rule(values: Mapping[str, Any]) -> tuple[str, Callable, str]:
  """Seeds are 31-bit, and so is the last replica's (seed + num_seeds - 1)."""
  num_seeds = values.get("num_seeds", 1)
  last = 2**31 - num_seeds
  return ("seed", lambda v: _is_int(v) and 0 <= v <= last,
          f"in [0, {last}]" + (" (seed + num_seeds - 1 is a seed too)"
                               if num_seeds > 1 else ""))


def first_problem(values: Mapping[str, Any]) -> Optional[tuple[str, str]]:
  """(setting, what it must be) of the first bad training setting in `values` (keyed by
  `TrainOptions`' field names, which the experiments' flags share; absent settings are not
  checked), or None."""
  sizes, rates = _RULES[:8], _RULES[8:]  # the seed's range depends on num_seeds
  for name, ok, what in sizes:
    if name in values and not ok(values[name]):
      return name, what
  for name, ok, what in (_seed_rule(values), *rates):
    if name in values and not ok(values[name]):
      return name, what
  return None


@dataclasses.dataclass(frozen=True)
class TrainOptions:
  """Everything `fit` needs to know besides the model and the data."""
  experiment: str
  model_name: str
  workdir: str
  seed: int = 0
  epochs: int = 10
  optimizer: str = "rmsprop"
  learning_rate: float = 1e-3
  clip_norm: Optional[float] = None
  resume: bool = False
  overwrite: bool = False
  num_devices: Optional[int] = None  # per process
  num_seeds: int = 1
  flags: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # recorded in results.json
  steps_per_epoch: Optional[int] = None   # None: the data's own
  validation_steps: Optional[int] = None  # None: the data's own
  log_every_steps: int = 50               # the loss to TensorBoard every this many steps
  lr_schedule: str = "constant"           # optim.SCHEDULES
  warmup_steps: int = 0
  lr_decay_rate: float = 0.9              # per epoch, for lr_schedule="exponential"
  early_stopping_patience: Optional[int] = None
  compute_dtype: str = "float32"          # "bfloat16": mixed precision (rnn_jax.precision)

  def __post_init__(self):
    """Refuses, when built, what could not train, by the rules of `first_problem`:
    a `ValueError` naming the field, so that no run starts from a bad value."""
    for name in ("experiment", "model_name"):
      if not isinstance(getattr(self, name), str):
        raise ValueError(f"TrainOptions.{name} must be a string, got "
                         f"{getattr(self, name)!r}")
    if not isinstance(self.workdir, (str, os.PathLike)) or not str(self.workdir):
      raise ValueError(f"TrainOptions.workdir must be a directory path, got {self.workdir!r}")
    for name in ("resume", "overwrite"):
      if not isinstance(getattr(self, name), bool):
        raise ValueError(f"TrainOptions.{name} must be True or False, got "
                         f"{getattr(self, name)!r}")
    values = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
    problem = first_problem(values)
    if problem is not None:
      name, what = problem
      raise ValueError(f"TrainOptions.{name} must be {what}, got {values[name]!r}")
