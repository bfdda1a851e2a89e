"""The runs of an experiment's models, planned and checked before any of them trains.

Every experiment calls `plan` with one `TrainOptions` per model (each its own workdir),
before it reads data or trains, and then runs what the plan says:

  for run in train.plan_runs(options_by_model, list_flag="model"):
    if run.finished:            # a finished run with the same flags: its results.json
      results[run.name] = run.results
      continue
    train.fit(..., options=run.options)

With --resume a multi-model run resumes as a whole: a finished model is reused once its
results.json shows the same flags (and --epochs); an interrupted one continues from its
checkpoint once that checkpoint's configuration matches (read without any array); the
others start. Models left out of the list are left alone, so dropping a finished model
from --model on resume is fine: each model's run records its own name as the list flag
(`list_flag`, "model"), not the list, so the list is no part of any model's configuration. Without --resume (or --overwrite) a finished or interrupted model
is refused, before anything trains. Every refusal is one `UserError` line.
"""
from __future__ import annotations

import collections
import dataclasses
import errno
import json
import os
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from rnn_jax.io import checkpoints, files
from rnn_jax.errors import UserError
from rnn_jax.train import rundir
from rnn_jax.train.options import TrainOptions


@dataclasses.dataclass(frozen=True)
class ModelRun:
  """One model's part of an experiment run."""
  name: str
  options: TrainOptions            # its recorded flags name this model alone (--model=NAME)
  status: str                      # "start" | "resume" | "finished" | "overwrite"
  results: Optional[dict] = None   # "finished": its results.json

  @property
  def finished(self) -> bool:
    return self.status == "finished"


def check_names(names: Sequence[str], known: Sequence[str], list_flag: str) -> None:
  """The --model list: not empty, no unknown name, no name twice."""
  if not names:
    raise UserError(f"--{list_flag}: give at least one model, from {list(known)}")
  unknown = [n for n in names if n not in known]
  if unknown:
    raise UserError(f"--{list_flag}: unknown {unknown}; choose from {list(known)}")
  twice = [n for n, count in collections.Counter(names).items() if count > 1]
  if twice:
    raise UserError(f"--{list_flag}={','.join(names)}: {twice[0]!r} is listed twice")


def check_models(models: Mapping[str, Any], implementation: str,
                 flag: str = "implementation") -> None:
  """Every model's recurrent layers can run their `implementation` (`fit.check_model`), or
  one `UserError` naming the model and the flag, before any workdir is made or data read."""
  from rnn_jax.train.fit import check_model  # pylint: disable=import-outside-toplevel
  for name, model in models.items():
    try:
      check_model(model)
    except ValueError as e:
      raise UserError(f"--{flag}={implementation} does not fit --model={name}: {e}") from None


def check_workdir(path: Path) -> None:
  """A workdir that is a file, or whose name the file system refuses, is a UserError."""
  try:
    os.stat(path)
  except FileNotFoundError:
    return
  except OSError as e:
    if e.errno == errno.ENOTDIR:
      raise UserError(f"--workdir: {path}: a part of the path is a file, not a "
                      "directory") from None
    raise UserError(f"--workdir: {path}: {files.cause(e)}") from None
  if not os.path.isdir(path):
    raise UserError(f"--workdir: {path} exists and is not a directory")


def _read_results(path: Path) -> dict:
  try:
    results = json.loads(path.read_text())
  except (OSError, ValueError) as e:
    raise UserError(f"{path}: not a results file ({files.cause(e)}); pass --overwrite to "
                    "replace it") from None
  if not isinstance(results, dict) or not isinstance(results.get("flags"), dict):
    raise UserError(f"{path}: not a results file (no flags); pass --overwrite to replace it")
  return results


def plan_one(name: str, options: TrainOptions) -> ModelRun:
  """What to do with one model's workdir; a UserError when it may not be touched."""
  workdir = Path(options.workdir)
  check_workdir(workdir)
  results_path = workdir / "results.json"
  if options.overwrite:
    return ModelRun(name, options, "overwrite")
  if results_path.exists():
    if not options.resume:
      raise UserError(f"{workdir} already holds a finished run ({results_path}); pass "
                      "--overwrite to replace it or choose another --workdir")
    results = _read_results(results_path)
    rundir.check_same_config(rundir.config_of(results["flags"]),
                             rundir.config_of(options.flags), workdir, what="finished")
    # The epochs it trained (fit's effective config; the flag in older results). A run
    # that trained nothing (the naive baseline) has no epochs to compare.
    config = results.get("config") if isinstance(results.get("config"), dict) else {}
    trained = config.get("epochs", results["flags"].get("epochs"))
    if results.get("history") and trained != options.epochs:
      raise UserError(
          f"--resume: {workdir} finished with --epochs={trained}, not {options.epochs}; a "
          f"finished run is not extended: resume with --epochs={trained}, or pass "
          "--overwrite to start over")
    return ModelRun(name, options, "finished", results)
  if checkpoints.committed(workdir / "checkpoints" / "latest"):
    if not options.resume:
      raise UserError(f"{workdir} holds an unfinished run ({workdir / 'checkpoints'}); pass "
                      "--resume to continue it or --overwrite to start over")
    rundir.check_resume(workdir, rundir.config_of(options.flags), options.epochs)
    return ModelRun(name, options, "resume")
  return ModelRun(name, options, "start")


def plan(options_by_model: Mapping[str, TrainOptions], *,
         list_flag: Optional[str] = "model") -> list[ModelRun]:
  """Each model's run, every model checked before any trains (see the module docstring).

  `list_flag` names the experiment's flag that lists its models ("model"): each model's
  recorded flags hold its own name there, so that they describe that model's run alone.
  """
  runs = []
  for name, options in options_by_model.items():
    if list_flag is not None:
      options = dataclasses.replace(options, flags={**options.flags, list_flag: name})
    runs.append(plan_one(name, options))
  return runs
