"""Every GPU measurement the README's accelerator table needs, in one command that ends
within 8 minutes and prints the table, so that the first lent GPU fills it in one call:

  PYTHONPATH=. python3 -m benchmarks.gpu             # on a machine with a GPU
  python -m benchmarks.gpu --dry-run                 # anywhere: the plan, nothing timed

Each (task, framework) below is one `benchmarks.run` worker in its own process (a first
step, 2 warm-up steps, then --steps timed ones), the lecture's tasks first, so that when
the time budget runs out (--budget-s) what is left is the least needed; a pair a framework
cannot compute (no such layer, no recurrent dropout) is skipped without starting a
process. Then benchmarks.run's table (each time / rnn_jax's) and, beside each measured
path, the paper estimate it tests (benchmarks.estimate, docs/performance.md).

The frameworks: rnn_jax ("auto": on a GPU cuDNN for the LSTMs it computes, else "fused",
minGRU by the associative scan), rnn_jax_fused, rnn_jax_cudnn, rnn_jax_pallas (the
persistent Triton kernels), jax_cudnn (jax.experimental.rnn), torch (nn.GRU/nn.LSTM on
CUDA: cuDNN) and flax (linen's nn.RNN). `python -m benchmarks.run --accelerator` times more
(every rnn_jax backend, every task) and takes longer.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from benchmarks import estimate, run
from benchmarks import tasks as tasks_lib

TASKS = ("jena_gru", "imdb_lstm", "imdb_bilstm", "jena_min_gru", "jena_gru_dropout",
         "imdb_min_lstm")
FRAMEWORKS = ("rnn_jax", "rnn_jax_fused", "rnn_jax_cudnn", "rnn_jax_pallas", "jax_cudnn",
              "torch", "flax")
# What a GPU alone times: elsewhere these are unsupported (cuDNN) or not a measurement
# (Pallas's interpret mode).
GPU_ONLY = {"rnn_jax_cudnn": "cuDNN's LSTM runs on GPUs only",
            "jax_cudnn": "cuDNN's LSTM runs on GPUs only",
            "rnn_jax_pallas": "the Pallas kernels compile for GPUs and TPUs; elsewhere they "
                              "are interpreted, a check and not a time"}
# The estimate each measured path tests (benchmarks.estimate's paths).
ESTIMATED = {"rnn_jax_fused": "fused", "rnn_jax_cudnn": "cudnn", "jax_cudnn": "cudnn",
             "torch": "cudnn_persistent", "rnn_jax_pallas": "pallas"}
_PEER_MODULES = {"torch": "pytorch", "flax": "flax_linen", "jax_cudnn": "jax_cudnn"}


def cannot_compute(task_name: str, framework: str):
  """Why `framework` has no such model (as its peer module or backend says), or None."""
  task = tasks_lib.TASKS[task_name]
  kinds = {kind for kind, _, _ in task.recurrent}
  if framework in ("torch", "flax", "jax_cudnn") and task.minimal:
    return "no minGRU / minLSTM layer"
  if framework in ("torch", "flax") and task.dropout:
    return "no recurrent dropout"
  if framework in ("rnn_jax_cudnn", "jax_cudnn") and (not kinds <= {"lstm", "bilstm"}
                                                      or task.dropout):
    return "cuDNN's LSTM only, without recurrent dropout"
  if framework == "rnn_jax_fused" and task.minimal:
    return "fused computes cells with a gate layout, not minGRU / minLSTM"
  return None


def plan(tasks=TASKS, frameworks=FRAMEWORKS, gpu: bool = True) -> list[dict]:
  """[{task, framework, action: "time" | "skip", why}] in the order they would run."""
  out = []
  for task in tasks:
    for framework in frameworks:
      why = cannot_compute(task, framework)
      if why is None and not gpu and framework in GPU_ONLY:
        why = f"needs a GPU: {GPU_ONLY[framework]}"
      out.append(dict(task=task, framework=framework, action="skip" if why else "time",
                      why=why))
  return out


def _platform() -> str:
  """JAX's default backend, asked of a child process (this one keeps no GPU memory)."""
  env = {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
  done = subprocess.run([sys.executable, "-c", "import jax; print(jax.default_backend())"],
                        capture_output=True, text=True, env=env, check=False)
  return (done.stdout.strip().splitlines() or ["unknown"])[-1]


def _worker(task: str, framework: str, steps: int, timeout: float) -> dict:
  command = [sys.executable, "-m", "benchmarks.run", f"--worker={framework}:{task}",
             f"--steps={steps}", "--keep_freed_memory"]
  try:
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
  except subprocess.TimeoutExpired:
    return {"error": f"timed out after {timeout:.0f} s"}
  for line in done.stdout.splitlines():
    if line.startswith("RESULT "):
      return json.loads(line[len("RESULT "):])
  tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
  return {"error": f"exit {done.returncode}: {tail}"}


def _estimates(results: list[dict]) -> str:
  """Each measured path beside the estimate it tests, on the estimate's tasks."""
  lines = ["| task | framework | measured | estimate (H100) |", "|---|---|---|---|"]
  for record in results:
    path = ESTIMATED.get(record["framework"])
    if path is None or record["task"] not in estimate.TASKS or "median_step_s" not in record:
      continue
    task = tasks_lib.TASKS[record["task"]]
    expected = estimate.time_range(estimate.h100_seconds, task, path)
    lines.append(f"| {record['task']} | {record['framework']} | "
                 f"{record['median_step_s'] * 1e3:.2f} ms | {expected} |")
  return "\n".join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--dry-run", action="store_true",
                      help="list what would be timed and what skipped; time nothing")
  parser.add_argument("--steps", type=int, default=10, help="timed steps per pair")
  parser.add_argument("--budget-s", type=float, default=420.0,
                      help="start no pair after this many seconds (the whole run then ends "
                           "within 8 minutes)")
  parser.add_argument("--tasks", default=",".join(TASKS))
  parser.add_argument("--frameworks", default=",".join(FRAMEWORKS))
  args = parser.parse_args(argv)
  tasks = [t for t in args.tasks.split(",") if t]
  frameworks = [f for f in args.frameworks.split(",") if f]
  for name in tasks:
    if name not in tasks_lib.TASKS:
      parser.error(f"--tasks: unknown task {name!r}; known: {', '.join(tasks_lib.TASKS)}")
  for name in frameworks:
    if name not in FRAMEWORKS:
      parser.error(f"--frameworks: unknown {name!r}; known: {', '.join(FRAMEWORKS)}")

  platform = _platform()
  gpu = platform == "gpu"
  print(f"# machine: {run.machine()}; JAX's platform: {platform}", flush=True)
  pairs = plan(tasks, frameworks, gpu=gpu)
  if args.dry_run:
    for name in sorted({p["framework"] for p in pairs}):
      module = _PEER_MODULES.get(name, "ours")
      try:
        __import__(f"benchmarks.peers.{module}")
        state = "imports"
      except ImportError as e:
        state = f"not installed ({e})"
      print(f"# {name}: benchmarks.peers.{module} {state}", flush=True)
    for p in pairs:
      print(f"{p['action']}\t{p['task']}\t{p['framework']}"
            + (f"\tskipped: {p['why']}" if p["why"] else ""), flush=True)
    timed = sum(p["action"] == "time" for p in pairs)
    print(f"# dry run: {timed} of {len(pairs)} pairs would be timed; nothing was timed",
          flush=True)
    return 0
  if not gpu:
    print(f"error: no GPU (JAX's platform is {platform}); --dry-run lists the plan",
          file=sys.stderr)
    return 2

  start, results = time.perf_counter(), []
  for p in pairs:
    record = {"framework": p["framework"], "task": p["task"]}
    elapsed = time.perf_counter() - start
    if p["why"]:
      record["unsupported"] = p["why"]
    elif elapsed > args.budget_s:
      record["error"] = "skipped: time budget spent"
    else:
      record.update(_worker(p["task"], p["framework"], args.steps,
                            timeout=max(30.0, min(150.0, args.budget_s + 60.0 - elapsed))))
    results.append(record)
    print(json.dumps(record), flush=True)
  print()
  print(run.markdown_table(results, tasks, frameworks))
  print()
  print(_estimates(results))
  print(f"\n# {time.perf_counter() - start:.0f} s", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
