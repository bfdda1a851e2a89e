"""The paper estimate: the expected train-step time of the lecture's tasks on an H100 and a
TPU v5e through "fused" (a scan that launches kernels every step), cuDNN and the persistent
Pallas kernels ("pallas"), from the per-step work, the bytes and the launch and
synchronisation costs, each constant with its source. The first measurement on a device
(`python -m benchmarks.gpu`) is a test of this model; docs/performance.md holds its table.

  python -m benchmarks.estimate        # prints the markdown tables

Every time is a range: the model evaluated with every constant at its low, middle and high
value. Constants marked "assumed" have no published figure behind them: they are the
model's parameters that the first measurement fixes.
"""
from __future__ import annotations

import dataclasses
import math

from benchmarks import tasks as tasks_lib


@dataclasses.dataclass(frozen=True)
class Constant:
  low: float
  mid: float
  high: float
  unit: str
  source: str


H100 = {
    "fp32_flops": Constant(67e12, 67e12, 67e12, "FLOP/s",
                           "NVIDIA H100 SXM5 datasheet: 67 TFLOP/s FP32 (non-tensor)"),
    "tf32_flops": Constant(495e12, 495e12, 495e12, "FLOP/s",
                           "NVIDIA H100 SXM5 datasheet: 989 TFLOP/s TF32 with sparsity, "
                           "half without"),
    "sms": Constant(132, 132, 132, "SMs", "NVIDIA H100 SXM5: 132 SMs (H100 whitepaper)"),
    "hbm": Constant(3.35e12, 3.35e12, 3.35e12, "B/s", "NVIDIA H100 SXM5 datasheet: HBM3 "
                    "3.35 TB/s"),
    "launch": Constant(2e-6, 3e-6, 5e-6, "s per kernel",
                       "a few µs per kernel launched from the host: NVIDIA Technical Blog, "
                       "'Getting Started with CUDA Graphs' (2019); 4-6 µs per launch measured "
                       "in 'pegainfer (3): From Launch Overhead to CUDA Graph' (2025)"),
    "loop_sync": Constant(5e-6, 8e-6, 10e-6, "s per iteration",
                          "XLA:GPU runs a while loop's control on the host, one device-to-host "
                          "synchronisation per iteration (jax-ml/jax#2491); ~8 µs per lax.scan "
                          "iteration of a trivial body on a GPU "
                          "(QuantEcon/lecture-python-programming#440, 2025)"),
    "memory_latency": Constant(0.3e-6, 0.5e-6, 0.8e-6, "s",
                               "a global-memory load's latency, hundreds of cycles at ~1.8 GHz "
                               "(Luo et al. 2024, 'Benchmarking and Dissecting the Nvidia "
                               "Hopper GPU Architecture', arXiv:2402.13499)"),
    "kernels_per_step": Constant(3, 3, 4, "kernels",
                                 "assumed: XLA's scan body forward: the recurrent matmul, the "
                                 "gates' fusion, the state's update-slice; backward twice that"),
    "fixed_kernels": Constant(20, 30, 40, "kernels",
                              "assumed: the kernels around the recurrence in a train step "
                              "(embedding, projection and its gradient, Dense, loss, RMSprop)"),
}

TPU_V5E = {
    "bf16_flops": Constant(197e12, 197e12, 197e12, "FLOP/s",
                           "Cloud TPU v5e docs: 197 TFLOP/s bf16 per chip, one TensorCore of "
                           "four 128x128 MXUs, a vector unit and a scalar unit"),
    "hbm": Constant(819e9, 819e9, 819e9, "B/s", "Cloud TPU v5e docs: HBM2 16 GB, 819 GB/s"),
    "fusion": Constant(0.5e-6, 1e-6, 2e-6, "s per fusion",
                       "assumed: XLA:TPU runs loops on the chip (no host round trip); each "
                       "fusion of the loop body reads and writes HBM"),
    "step_chain": Constant(0.3e-6, 0.5e-6, 1e-6, "s",
                           "assumed: one MXU pass of [rows, 32] x [32, 32*G] plus the gates' "
                           "vector and transcendental work, operands in VMEM"),
    "fixed": Constant(20e-6, 50e-6, 100e-6, "s", "assumed: the train step's other fusions"),
}


def _layers(task):
  """[(gates, units, directions, kind)] of the task's recurrent layers."""
  out = []
  for kind, units, _ in task.recurrent:
    gates = {"gru": 3, "lstm": 4, "bilstm": 4, "min_gru": 2, "min_lstm": 3}[kind]
    out.append((gates, units, 2 if kind == "bilstm" else 1, kind))
  return out


def _time(task):
  return (tasks_lib.JENA_SHAPE if task.data == "jena" else tasks_lib.IMDB_SHAPE)[0]


def work(task, batch=tasks_lib.BATCH) -> dict:
  """Per step of the sequence, the whole batch: recurrent matmul FLOP (forward), the
  recurrent weights' bytes, the state's and the input projection's bytes (float32)."""
  flop = weights = state = xw = 0
  for gates, units, directions, kind in _layers(task):
    linear = kind.startswith("min_")
    flop += directions * (0 if linear else 2 * batch * units * gates * units)
    weights += directions * (0 if linear else 4 * units * gates * units)
    state += directions * 4 * batch * units * (2 if kind in ("lstm", "bilstm") else 1)
    xw += directions * 4 * batch * gates * units
  return dict(flop=flop, weights=weights, state=state, xw=xw)


def _pick(constants, level):
  return {k: getattr(c, level) for k, c in constants.items()}


def h100_seconds(task, path: str, level: str = "mid"):
  """Seconds per train step of `task` on an H100 by `path`, or None where it does not
  apply: "fused" (XLA's scan; minGRU/minLSTM: the log-space associative scan), "cudnn"
  (jax.experimental.rnn: CUDNN_RNN_ALGO_STANDARD, LSTM only), "cudnn_persistent"
  (PyTorch: CUDNN_RNN_ALGO_PERSIST_STATIC_SMALL_H for these sizes, TF32), "pallas"."""
  c = _pick(H100, level)
  time = _time(task)
  fixed = c["fixed_kernels"] * c["launch"]
  per_sm = c["fp32_flops"] / c["sms"]
  total = fixed
  for gates, units, directions, kind in _layers(task):
    linear = kind.startswith("min_")
    if path == "fused":
      if linear:  # "associative": ~2 log2(T) levels, ~2 kernels forward, ~4 backward each
        total += directions * 2 * math.log2(time) * 6 * c["launch"]
      else:  # one loop for both directions (unroll_together): one sync per iteration
        total += time * (2 * c["loop_sync"]
                         + directions * 3 * c["kernels_per_step"] * c["launch"])
    elif path == "cudnn":
      if kind not in ("lstm", "bilstm"):
        return None
      total += time * directions * 5 * c["launch"]  # 2 kernels forward, 3 backward
    elif path in ("cudnn_persistent", "pallas"):
      if linear:
        if path != "pallas":
          return None
        total += time * directions * 3 * c["memory_latency"]  # a, b; then a, h, dh back
        continue
      rate = c["tf32_flops"] / c["sms"] if path == "cudnn_persistent" else per_sm
      rows = 16  # one program's rows (BLOCKS["gpu"]); programs run side by side
      chain = 2 * rows * units * gates * units / rate  # one step's matmul on one SM
      forward = c["memory_latency"] + chain
      backward = c["memory_latency"] + 3 * chain  # the step recomputed, d_h, d_kernel
      total += time * directions * (forward + backward)
    else:
      raise ValueError(path)
  return total


def tpu_seconds(task, path: str, level: str = "mid"):
  """Seconds per train step of `task` on a TPU v5e by "fused" or "pallas"."""
  c = _pick(TPU_V5E, level)
  time = _time(task)
  total = c["fixed"]
  for _, _, directions, kind in _layers(task):
    linear = kind.startswith("min_")
    if path == "fused":
      if linear:
        total += directions * 2 * math.log2(time) * 6 * c["fusion"]
      else:
        total += time * directions * 9 * c["fusion"]  # 3 fusions forward, 6 backward
    elif path == "pallas":
      total += time * directions * (1 if linear else 4) * c["step_chain"]
    else:
      raise ValueError(path)
  return total


TASKS = ("jena_gru", "imdb_lstm", "imdb_bilstm", "jena_min_gru")


def time_range(fn, task, path) -> str:
  """'mid ms (low-high)' of fn(task, path, level), or a dash where the path does not apply."""
  values = [fn(task, path, level) for level in ("low", "mid", "high")]
  if values[1] is None:
    return "—"
  return f"{values[1] * 1e3:.2g} ms ({values[0] * 1e3:.2g}–{values[2] * 1e3:.2g})"


def tables() -> str:
  lines = ["| task | T x batch | layers | forward FLOP / step | weights | state / step | "
           "projection / step |", "|---|---|---|---|---|---|---|"]
  for name in TASKS:
    task = tasks_lib.TASKS[name]
    w = work(task)
    layers = ", ".join(f"{kind}({units})" for kind, units, _ in task.recurrent)
    lines.append(f"| {name} | {_time(task)} x {tasks_lib.BATCH} | {layers} | "
                 f"{w['flop'] / 1e6:.2f} M | {w['weights'] / 1024:.0f} KiB | "
                 f"{w['state'] / 1024:.0f} KiB | {w['xw'] / 1024:.0f} KiB |")
  lines += ["", "| task | H100 fused | H100 cuDNN (JAX) | H100 cuDNN persistent (PyTorch) | "
            "H100 pallas | TPU v5e fused | TPU v5e pallas |", "|---|---|---|---|---|---|---|"]
  for name in TASKS:
    task = tasks_lib.TASKS[name]
    cells = [time_range(h100_seconds, task, p)
             for p in ("fused", "cudnn", "cudnn_persistent", "pallas")]
    cells += [time_range(tpu_seconds, task, p) for p in ("fused", "pallas")]
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  lines += ["", "| constant | low | mid | high | source |", "|---|---|---|---|---|"]
  for device, constants in (("H100", H100), ("TPU v5e", TPU_V5E)):
    for key, c in constants.items():
      lines.append(f"| {device} {key} ({c.unit}) | {c.low:g} | {c.mid:g} | {c.high:g} | "
                   f"{c.source} |")
  return "\n".join(lines)


def main():
  print(tables())


if __name__ == "__main__":
  main()
