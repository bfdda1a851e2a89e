"""rnn_jax's train step in this checkout against another checkout, interleaved in one run.

  python -m benchmarks.checkouts --other=../baseline [--tasks=...] [--rounds=3] [--steps=20]
                                 [--frameworks=rnn_jax] [--new_frameworks=rnn_jax_fused]

For a change that must not slow anything down: each round runs every (checkout, task)
worker of `benchmarks.run` (its own subprocess, cwd = the checkout), the two checkouts
alternating, so that both see the same machine; `--new_frameworks` are timed in this
checkout only. Prints JSON lines and a markdown table of medians over rounds, with this
checkout's time divided by the other's.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from absl import flags

from benchmarks import run as run_lib
from experiments import command
from rnn_jax.errors import UserError

# --tasks, --frameworks (default here: rnn_jax), --rounds and --steps are benchmarks.run's.
_OTHER = flags.DEFINE_string("other", None, "The other checkout (a directory).")
_NEW = flags.DEFINE_list("new_frameworks", [], "Timed in this checkout only.")
FLAGS = flags.FLAGS
FLAGS.set_default("frameworks", ["rnn_jax"])
FLAGS.set_default("rounds", 3)
HERE = Path(__file__).resolve().parents[1]


def _worker(checkout: Path, framework: str, task: str, steps: int) -> dict:
  done = subprocess.run([sys.executable, "-m", "benchmarks.run", f"--worker={framework}:{task}",
                         f"--steps={steps}"], cwd=checkout, capture_output=True, text=True,
                        env={**os.environ, "PYTHONPATH": str(checkout)})
  for line in done.stdout.splitlines():
    if line.startswith("RESULT "):
      return json.loads(line[len("RESULT "):])
  return {"error": (done.stderr.strip().splitlines() or ["no output"])[-1]}


def main(argv):
  del argv
  if not _OTHER.value or not (Path(_OTHER.value) / "benchmarks" / "run.py").is_file():
    raise UserError(f"--other={_OTHER.value!r}: not a checkout with benchmarks/run.py")
  other = Path(_OTHER.value).resolve()
  print(f"# machine: {run_lib.machine()}\n# this: {HERE}\n# other: {other}", flush=True)
  times: dict = {}
  for round_index in range(FLAGS.rounds):
    for task in FLAGS.tasks:
      order = [("this", HERE), ("other", other)]
      if round_index % 2:
        order.reverse()
      runs = [(name, path, f) for name, path in order for f in FLAGS.frameworks]
      runs += [("this", HERE, f) for f in _NEW.value]
      for name, path, framework in runs:
        record = _worker(path, framework, task, FLAGS.steps)
        print(f"# round {round_index}: {name} {json.dumps(record)}", file=sys.stderr, flush=True)
        if "median_step_s" in record:
          times.setdefault((name, framework, task), []).append(record["median_step_s"])
  rows = ["| task | framework | other (ms) | this (ms) | this / other |", "|---|---|---|---|---|"]
  for task in FLAGS.tasks:
    for framework in FLAGS.frameworks + _NEW.value:
      this = times.get(("this", framework, task))
      base = times.get(("other", framework, task)) or times.get(("other", "rnn_jax", task))
      if not this:
        continue
      this_ms = 1e3 * statistics.median(this)
      base_ms = 1e3 * statistics.median(base) if base else float("nan")
      print(json.dumps({"task": task, "framework": framework, "this_ms": this, "other_ms": base}))
      rows.append(f"| {task} | {framework} | {base_ms:.1f} | {this_ms:.1f} | "
                  f"{this_ms / base_ms:.3f} |")
  print("\n".join(rows))


if __name__ == "__main__":
  command.run(main)
