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


def command(workdir, *flags):
  return [sys.executable, "-m", "experiments.adding_problem", *TINY, f"--workdir={workdir}",
          *flags]


def environment(kill_at=None, signal="KILL", **extra):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", **extra}
  env.pop("RNN_JAX_TEST_KILL_AT", None)
  if kill_at:
    env.update(RNN_JAX_TEST_KILL_AT=kill_at, RNN_JAX_TEST_KILL_SIGNAL=signal)
  return env


def run(workdir, *flags, kill_at=None, signal="KILL", **env):
  """Runs the tiny experiment to its end (or its kill); returns the CompletedProcess."""
  return subprocess.run(command(workdir, *flags), cwd=REPO, capture_output=True, text=True,
                        env=environment(kill_at, signal, **env), timeout=300)


def results(workdir):
  return json.loads((Path(workdir) / "gru" / "results.json").read_text())


def comparable(results_dict):
  """results.json without wall-clock timings: what must not depend on interruptions."""
  history = [{k: v for k, v in row.items() if k not in TIMINGS} for row in results_dict["history"]]
  return {"history": history, "best_epoch": results_dict["best_epoch"],
          "val": results_dict["val"], "test": results_dict["test"],
          "flags": {k: v for k, v in results_dict["flags"].items() if k not in ("workdir", "resume")}}
