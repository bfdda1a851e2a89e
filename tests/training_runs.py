"""Helpers for tests that train in a subprocess: a tiny adding-problem run of `fit`."""
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY = ["--model=gru", "--seq_len=6", "--units=4", "--num_train=320", "--num_test=64",
        "--batch_size=32", "--epochs=3"]
TIMINGS = ("seconds", "steps_per_s")


def python_m(module, kill_at=None, signal="KILL"):
  """`python -m <module>`, or with `kill_at` the same run sent SIG<signal> at that point
  (tests/kill_at.py names the points)."""
  return [sys.executable, "-m", *(["tests.kill_at", kill_at, signal] if kill_at else []),
          module]


def command(workdir, *flags, kill_at=None, signal="KILL"):
  return [*python_m("experiments.adding_problem", kill_at, signal), *TINY,
          f"--workdir={workdir}", *flags]


def environment(**extra):
  return {**os.environ, "JAX_PLATFORMS": "cpu", **extra}


def run(workdir, *flags, kill_at=None, signal="KILL", **env):
  """Runs the tiny experiment to its end (or its kill); returns the CompletedProcess."""
  return subprocess.run(command(workdir, *flags, kill_at=kill_at, signal=signal), cwd=REPO,
                        capture_output=True, text=True, env=environment(**env), timeout=300)


def results(workdir):
  return json.loads((Path(workdir) / "gru" / "results.json").read_text())


def comparable(results_dict):
  """results.json without wall-clock timings: what must not depend on interruptions."""
  history = [{k: v for k, v in row.items() if k not in TIMINGS} for row in results_dict["history"]]
  return {"history": history, "best_epoch": results_dict["best_epoch"],
          "val": results_dict["val"], "test": results_dict["test"],
          "flags": {k: v for k, v in results_dict["flags"].items() if k not in ("workdir", "resume")}}
