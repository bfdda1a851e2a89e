"""Train-step speed of rnn_jax and its peers on the lecture's models, in one run.

  python -m benchmarks.run [--tasks=jena_gru,imdb_lstm] [--frameworks=rnn_jax,flax]
                           [--steps=20] [--rounds=1] [--sections=steps,sampler,epoch]
  python -m benchmarks.run --accelerator    # every layout and the accelerator peers

rnn_jax is `rnn_jax` (implementation="auto": the platform's backend for each layer) and,
per backend (rnn_jax.backends), `rnn_jax_per_gate`, `rnn_jax_fused`, `rnn_jax_scan`,
`rnn_jax_native` (minGRU's opt-in CPU kernel), `rnn_jax_cudnn` (cuDNN's LSTM, GPU) and
`rnn_jax_pallas` (the persistent Pallas kernels, GPU and TPU; on a CPU, where they are
interpreted, unsupported); a backend that cannot compute a task's layers is reported as
unsupported there. `python -m benchmarks.gpu` is the GPU table's prepared run.
`rnn_jax_bf16` is `rnn_jax` with `--compute_dtype=bfloat16` (mixed precision,
rnn_jax.precision). --accelerator times the steps of every task for every rnn_jax
backend, Flax, PyTorch (cuDNN on a GPU) and jax.experimental.rnn's cuDNN LSTM, one round,
on whatever device JAX and PyTorch find: the GPU table of docs/performance.md.

steps:   every (framework, task) pair runs in its own subprocess (Keras's backend is fixed
         at import; peak memory is per pair) on the same batch (`benchmarks.tasks`): one
         first step (compile time), 2 warm-up steps, then `--steps` timed steps. With
         `--rounds` > 1 the whole sweep repeats, frameworks interleaved, and the medians
         of the rounds' medians are reported. Prints one JSON line per pair, then a
         markdown table with each peer's time divided by rnn_jax's.
sampler: windows/second of rnn_jax.data.windows against the lecture's generator.
epoch:   wall time of one lecture epoch (Jena: 500 GRU steps; IMDB: 157 LSTM steps)
         through rnn_jax's jitted train step against Keras's `fit` on the same batches.

Every worker, whatever its framework, first lets glibc keep freed memory
(`rnn_jax.train.keep_freed_memory`, which the experiments call too), so that
the table compares the frameworks' code and not their processes' allocator settings;
`--nokeep_freed_memory` measures each framework's process as it comes.
"""
from __future__ import annotations

import functools
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
import types

from absl import flags

from benchmarks import tasks as tasks_lib
from benchmarks.lecture_generator import lecture_generator
from experiments import command
from rnn_jax.errors import UserError

IMPLEMENTATIONS = ("rnn_jax_per_gate", "rnn_jax_fused", "rnn_jax_scan", "rnn_jax_native",
                   "rnn_jax_cudnn", "rnn_jax_pallas")
FRAMEWORKS = ("rnn_jax", "rnn_jax_one_device", *IMPLEMENTATIONS, "rnn_jax_bf16", "flax",
              "keras_jax", "torch", "keras_tf", "jax_cudnn")
ACCELERATOR_FRAMEWORKS = ("rnn_jax", "rnn_jax_per_gate", "rnn_jax_fused", "rnn_jax_scan",
                          "rnn_jax_cudnn", "rnn_jax_pallas", "flax", "torch", "jax_cudnn")
SECTIONS = ("steps", "sampler", "epoch")

_TASKS = flags.DEFINE_list("tasks", list(tasks_lib.TASKS), "Tasks to time.")
_FRAMEWORKS = flags.DEFINE_list("frameworks", list(FRAMEWORKS), "Frameworks to time.")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed train steps per (framework, task).",
                              lower_bound=1)
_ROUNDS = flags.DEFINE_integer("rounds", 1, "Repeat the sweep, frameworks interleaved.",
                               lower_bound=1)
_SECTIONS = flags.DEFINE_list("sections", list(SECTIONS), "What to run: steps,sampler,epoch.")
_ACCELERATOR = flags.DEFINE_bool("accelerator", False, "Time every task's steps for every "
                                  "rnn_jax implementation and the accelerator peers "
                                  f"({','.join(ACCELERATOR_FRAMEWORKS)}), one round.")
_KEEP_FREED = flags.DEFINE_bool("keep_freed_memory", True, "Every worker lets glibc keep "
                                "freed memory (rnn_jax.train.keep_freed_memory) first.")
_WORKER = flags.DEFINE_string("worker", None, "Internal: FRAMEWORK:TASK or epoch:FRAMEWORK:DATA.")
_WARMUP = 2


# ----------------------------------------------------------------------------- workers

def _peer(framework: str):
  """The peer module; Keras's backend is chosen here, before Keras is imported."""
  if framework.startswith("keras_"):
    os.environ["KERAS_BACKEND"] = {"keras_jax": "jax", "keras_tf": "tensorflow"}[framework]
    try:
      from benchmarks.peers import keras3
    except ImportError as e:
      raise ModuleNotFoundError(f"not installed ({e})") from None
    return keras3
  if framework == "torch":
    from benchmarks.peers import pytorch
    return pytorch
  if framework == "flax":
    from benchmarks.peers import flax_linen
    return flax_linen
  if framework == "jax_cudnn":
    from benchmarks.peers import jax_cudnn
    return jax_cudnn
  from benchmarks.peers import ours
  if framework == "rnn_jax_bf16":  # fit's --compute_dtype=bfloat16
    return types.SimpleNamespace(train_step=functools.partial(ours.train_step,
                                                              compute_dtype="bfloat16"))
  if framework == "rnn_jax_one_device":
    return types.SimpleNamespace(train_step=functools.partial(ours.train_step, num_devices=1))
  if framework == "rnn_jax_pallas":
    import jax  # pylint: disable=import-outside-toplevel
    if jax.default_backend() == "cpu":
      from benchmarks.peers import Unsupported  # pylint: disable=import-outside-toplevel
      raise Unsupported("the Pallas kernels compile for GPUs and TPUs; on a CPU they are "
                        "interpreted, a check and not a time")
  if framework in IMPLEMENTATIONS:
    implementation = framework[len("rnn_jax_"):]
    return types.SimpleNamespace(train_step=functools.partial(ours.train_step,
                                                              implementation=implementation))
  return ours


def _peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def time_steps(framework: str, task_name: str, steps: int) -> dict:
  """One (framework, task): {first_step_s, median_step_s, ...} or {unsupported: why}."""
  from benchmarks.peers import Unsupported
  task = tasks_lib.TASKS[task_name]
  record = {"framework": framework, "task": task_name}
  try:
    peer = _peer(framework)
    x, y = tasks_lib.inputs(task)
    step = peer.train_step(task, x, y)
  except (Unsupported, ModuleNotFoundError) as e:
    return {**record, "unsupported": str(e)}
  start = time.perf_counter()
  loss = step()
  record["first_step_s"] = time.perf_counter() - start
  for _ in range(_WARMUP):
    step()
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    loss = step()
    times.append(time.perf_counter() - start)
  return {**record, "median_step_s": statistics.median(times), "min_step_s": min(times),
          "loss": loss, "peak_rss_mb": round(_peak_rss_mb(), 1)}


def time_epoch(framework: str, data: str) -> dict:
  """Wall time of one lecture epoch, compile included, over 8 distinct batches cycled."""
  import numpy as np
  task = tasks_lib.TASKS["jena_gru" if data == "jena" else "imdb_lstm"]
  num_steps = 500 if data == "jena" else 157
  batches = [tasks_lib.inputs(task, seed=i) for i in range(8)]
  record = {"framework": framework, "epoch": task.name, "steps": num_steps}
  try:
    keras3 = None if framework == "rnn_jax" else _peer(framework)
  except ModuleNotFoundError as e:
    return {**record, "unsupported": str(e)}
  if keras3 is None:
    from benchmarks.peers import ours
    _, init_state, step, put = ours.make_step_fn(task)
    start = time.perf_counter()
    state = init_state(put(*batches[0])[0])
    for i in range(num_steps):
      state, loss = step(state, *put(*batches[i % len(batches)]))
    loss = float(loss) / (num_steps * tasks_lib.BATCH)  # the epoch's mean
  else:
    net = keras3.model(task)
    x = np.concatenate([batches[i % len(batches)][0] for i in range(num_steps)])
    y = np.concatenate([batches[i % len(batches)][1] for i in range(num_steps)])
    start = time.perf_counter()
    history = net.fit(x, y, batch_size=tasks_lib.BATCH, epochs=1, shuffle=False, verbose=0)
    loss = float(history.history["loss"][-1])
  return {**record, "epoch_s": time.perf_counter() - start, "loss": loss,
          "peak_rss_mb": round(_peak_rss_mb(), 1)}


def _worker(spec: str, steps: int) -> None:
  if _KEEP_FREED.value:
    from rnn_jax.train.runtime import keep_freed_memory
    keep_freed_memory()
  parts = spec.split(":")
  if parts[0] == "epoch":
    record = time_epoch(parts[1], parts[2])
  else:
    record = time_steps(parts[0], parts[1], steps)
  print("RESULT " + json.dumps(record), flush=True)


def _in_subprocess(spec: str, steps: int) -> dict:
  command = [sys.executable, "-m", "benchmarks.run", f"--worker={spec}", f"--steps={steps}",
             f"--{'' if _KEEP_FREED.value else 'no'}keep_freed_memory"]
  done = subprocess.run(command, capture_output=True, text=True)
  for line in done.stdout.splitlines():
    if line.startswith("RESULT "):
      return json.loads(line[len("RESULT "):])
  tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
  return {"error": f"exit {done.returncode}: {tail}"}


# ----------------------------------------------------------------------------- sampler


def time_sampler(num_batches: int = 50, rounds: int = 7) -> list[dict]:
  """Windows/second drawing Jena-shaped training batches (420,551 rows x 14 features;
  lookback 1440, step 6, batch 128), rnn_jax against the lecture's generator.

  Both produce the host arrays a train step consumes: the lecture's generator
  <float64>[128, 240, 14] samples, `WindowBatches.train` (x <float32>[128, 240, 14], y,
  weight). Rounds alternate the two samplers in this process; the medians of the rounds
  are reported, and `speedup` is the median of the rounds' ratios (the machine may be
  shared). `layout_s` is rnn_jax's one-time cost of its phase-major copy of the data,
  paid on the first batch and left out of the rates.
  """
  import numpy as np
  from rnn_jax.data import windows
  data = np.random.default_rng(0).standard_normal((420_551, 14), dtype=np.float32)
  train_end, val_end = 200_000, 300_000
  generator = lecture_generator(data, 1440, 144, 0, train_end, shuffle=True)
  next(generator)
  batches = windows.WindowBatches.from_split(
      data, 1, train_end=train_end, val_end=val_end, lookback=1440, step=6, delay=144,
      batch_size=128, steps_per_epoch=num_batches)
  start = time.perf_counter()
  next(iter(batches.train(seed=0, epoch=0)))
  layout_s = time.perf_counter() - start

  def rate(draws) -> float:
    start = time.perf_counter()
    for _ in range(num_batches):
      next(draws)
    return num_batches * 128 / (time.perf_counter() - start)

  lecture, ours = [], []
  for round_index in range(rounds):
    lecture.append(rate(generator))
    ours.append(rate(iter(batches.train(seed=0, epoch=round_index + 1))))
  speedup = statistics.median(o / l for o, l in zip(ours, lecture))
  return [{"sampler": "lecture generator", "windows_per_s": round(statistics.median(lecture)),
           "ms_per_batch": round(128e3 / statistics.median(lecture), 3)},
          {"sampler": "rnn_jax.data.windows", "windows_per_s": round(statistics.median(ours)),
           "ms_per_batch": round(128e3 / statistics.median(ours), 3),
           "speedup": round(speedup, 1), "layout_s": round(layout_s, 3), "rounds": rounds}]


# ----------------------------------------------------------------------------- report

def machine() -> str:
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
  except (OSError, StopIteration):
    pass
  accelerator = ""  # named without starting JAX here, which would take the GPU's memory
  if shutil.which("nvidia-smi"):
    done = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                          capture_output=True, text=True, check=False)
    accelerator = "".join(f", {name}" for name in done.stdout.splitlines() if name.strip())
  return (f"{cpu}, {os.cpu_count()} CPUs{accelerator}, {platform.system()}, "
          f"Python {platform.python_version()}")


def markdown_table(results: list[dict], task_names, frameworks) -> str:
  """Median step (ms), each peer's time / rnn_jax's in parentheses."""
  by_key = {(r["framework"], r["task"]): r for r in results}
  lines = ["| task | GFLOP/step | " + " | ".join(frameworks) + " |",
           "|---|---|" + "---|" * len(frameworks)]
  for name in task_names:
    ours = by_key.get(("rnn_jax", name), {}).get("median_step_s")
    cells = []
    for framework in frameworks:
      r = by_key.get((framework, name), {})
      if "median_step_s" in r:
        ms = r["median_step_s"] * 1e3
        ratio = f" ({r['median_step_s'] / ours:.2f}x)" if ours and framework != "rnn_jax" else ""
        cells.append(f"{ms:.1f} ms{ratio}")
      else:
        cells.append(r.get("unsupported") and "unsupported" or r.get("error", "-"))
    gflop = tasks_lib.flops_per_step(tasks_lib.TASKS[name]) / 1e9
    lines.append(f"| {name} | {gflop:.2f} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def _median_over_rounds(rounds: list[dict]) -> dict:
  ok = [r for r in rounds if "median_step_s" in r]
  if not ok:
    return rounds[0]
  merged = dict(ok[0])
  for field in ("first_step_s", "median_step_s", "min_step_s", "peak_rss_mb"):
    merged[field] = statistics.median(r[field] for r in ok)
  merged["peak_rss_mb"] = round(merged["peak_rss_mb"], 1)
  merged["rounds"] = len(ok)
  return merged


def main(argv) -> None:
  del argv
  if _WORKER.value:
    _worker(_WORKER.value, _STEPS.value)
    return
  for name in _TASKS.value:
    if name not in tasks_lib.TASKS:
      raise UserError(f"--tasks: unknown task {name!r}; known: {', '.join(tasks_lib.TASKS)}")
  for name in _FRAMEWORKS.value:
    if name not in FRAMEWORKS:
      raise UserError(f"--frameworks: unknown framework {name!r}; known: {', '.join(FRAMEWORKS)}")
  for name in _SECTIONS.value:
    if name not in SECTIONS:
      raise UserError(f"--sections: unknown section {name!r}; known: {', '.join(SECTIONS)}")
  if _ACCELERATOR.value:
    flags.FLAGS.frameworks = list(ACCELERATOR_FRAMEWORKS)
    flags.FLAGS.sections = ["steps"]
  print(f"# machine: {machine()}", flush=True)
  print(f"# command: python -m benchmarks.run --tasks={','.join(_TASKS.value)} "
        f"--frameworks={','.join(_FRAMEWORKS.value)} --steps={_STEPS.value} "
        f"--rounds={_ROUNDS.value} --sections={','.join(_SECTIONS.value)}"
        f"{'' if _KEEP_FREED.value else ' --nokeep_freed_memory'}", flush=True)

  if "steps" in _SECTIONS.value:
    rounds: dict = {}
    for round_index in range(_ROUNDS.value):
      for name in _TASKS.value:
        order = _FRAMEWORKS.value if round_index % 2 == 0 else _FRAMEWORKS.value[::-1]
        for framework in order:
          record = _in_subprocess(f"{framework}:{name}", _STEPS.value)
          record = {"framework": framework, "task": name, **record}
          rounds.setdefault((framework, name), []).append(record)
          print(f"# round {round_index}: {json.dumps(record)}", file=sys.stderr, flush=True)
    results = [_median_over_rounds(rounds[(f, n)]) for n in _TASKS.value
               for f in _FRAMEWORKS.value]
    for record in results:
      print(json.dumps(record), flush=True)
    print()
    print(markdown_table(results, _TASKS.value, _FRAMEWORKS.value))
    print(flush=True)

  if "sampler" in _SECTIONS.value:
    for record in time_sampler():
      print(json.dumps(record), flush=True)

  if "epoch" in _SECTIONS.value:
    for data in ("jena", "imdb"):
      for framework in ("rnn_jax", "keras_jax", "keras_tf"):
        if framework in _FRAMEWORKS.value:
          record = _in_subprocess(f"epoch:{framework}:{data}", _STEPS.value)
          print(json.dumps({"framework": framework, "epoch": data, **record}), flush=True)
    print("# epoch_s: wall time of one epoch, compilation included; Keras: model.fit(verbose=0)",
          flush=True)


if __name__ == "__main__":
  command.run(main)
