"""Train-step time of N seeds trained together against one seed (rnn_jax.train).

  python -m benchmarks.seeds [--num_seeds=4] [--steps=10] [--rounds=5] [--batch_size=128]

The lecture's GRU(32) -> Dense(1) on Jena-shaped windows <float32>[batch, 240, 14], MAE
loss, RMSprop: the very train step `fit` compiles (`train.make_train_step`), on the mesh
`fit` builds (`train.Placement.make`), for
  * one seed on one device (on a CPU, one core);
  * one seed as `--num_seeds=1` runs it: its batch split over the devices (on a CPU,
    `train.cpu_devices_per_core` makes one device per core);
  * N seeds as `--num_seeds=N` runs them: vmapped, spread over the devices;
  * N seeds vmapped on one device (what the replicas cost without the spreading).
Each round times --steps steps of each, interleaved; reported are the medians over
rounds of the per-step time, and the ratios to one seed (N separate runs: N).
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
from typing import Optional

import jax
import numpy as np
from absl import flags

from experiments import command
from rnn_jax import layers, train
from rnn_jax.train import optim

_NUM_SEEDS = flags.DEFINE_integer("num_seeds", 4, "Seeds trained together.", lower_bound=2)
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps per round and variant.", lower_bound=1)
_ROUNDS = flags.DEFINE_integer("rounds", 5, "Rounds (medians are over rounds).", lower_bound=1)
_BATCH = flags.DEFINE_integer("batch_size", 128, "Rows per batch.", lower_bound=1)
_TIME, _FEATURES, _UNITS = 240, 14, 32


def _variant(num_seeds: int, num_devices: Optional[int]):
  """(step(state) -> state, state) for `num_seeds` replicas, compiled and warmed up."""
  placement = train.Placement.make(num_devices, _BATCH.value, num_seeds)
  model = layers.Sequential([layers.GRU(_UNITS), layers.Dense(1)])
  optimizer = optim.make("rmsprop", 1e-3)
  step_fn = train.make_train_step(model, optimizer, "mae", ("mae",), placement)
  rng = np.random.default_rng(0)
  lead = [num_seeds] if num_seeds > 1 else []
  x = rng.normal(size=lead + [_BATCH.value, _TIME, _FEATURES]).astype(np.float32)
  y = rng.normal(size=lead + [_BATCH.value, 1]).astype(np.float32)
  weight = np.ones(lead + [_BATCH.value], np.float32)
  seeds = list(range(num_seeds))
  sample = x[0] if lead else x
  state = train.init_state(train.init_params(model, [sample] * num_seeds, seeds), optimizer,
                           placement, seeds, "mae", ("mae",))
  epoch = jax.device_put(np.int32(1), placement.replicated)
  batch = jax.device_put((x, y, weight), placement.batches)

  def step(state):
    return step_fn(state, epoch, *batch)

  start = time.perf_counter()
  state = jax.block_until_ready(step(state))
  compile_s = time.perf_counter() - start
  for _ in range(2):
    state = step(state)
  return step, jax.block_until_ready(state), compile_s, placement.mesh.devices.size


def _time(step, state, steps: int):
  start = time.perf_counter()
  for _ in range(steps):
    state = step(state)
  state = jax.block_until_ready(state)
  return (time.perf_counter() - start) / steps, state


def main(argv):
  del argv
  n = _NUM_SEEDS.value
  train.cpu_devices_per_core(n, _BATCH.value)  # as `--num_seeds=n` does, before JAX computes
  names = {"1": (1, 1), "1_all_devices": (1, None), f"{n}": (n, None),
           f"{n}_one_device": (n, 1)}
  variants = {name: _variant(*spec) for name, spec in names.items()}
  states = {name: v[1] for name, v in variants.items()}
  per_step = {name: [] for name in variants}
  for _ in range(_ROUNDS.value):
    for name, (step, _, _, _) in variants.items():
      seconds, states[name] = _time(step, states[name], _STEPS.value)
      per_step[name].append(seconds)
  median = {name: statistics.median(times) for name, times in per_step.items()}
  report = {"device": str(jax.local_devices()[0].device_kind), "platform": platform.platform(),
            "cores": os.cpu_count(), "shape": [_BATCH.value, _TIME, _FEATURES],
            "model": f"GRU({_UNITS})->Dense(1)", "steps": _STEPS.value,
            "rounds": _ROUNDS.value,
            "devices": {name: v[3] for name, v in variants.items()},
            "compile_s": {name: round(v[2], 3) for name, v in variants.items()},
            "step_ms_median": {name: round(1e3 * v, 3) for name, v in median.items()},
            "step_ms_rounds": {name: [round(1e3 * t, 3) for t in v]
                               for name, v in per_step.items()},
            "ratio": round(median[f"{n}"] / median["1"], 3),
            "ratio_to_one_seed_on_all_devices": round(median[f"{n}"] / median["1_all_devices"], 3),
            "ratio_one_device": round(median[f"{n}_one_device"] / median["1"], 3)}
  print(json.dumps(report))
  print(f"\n| seeds | devices | step (ms, median of {_ROUNDS.value}) | per seed (ms) | "
        f"x one seed |\n|---|---|---|---|---|")
  for name, seconds in median.items():
    seeds, devices = names[name][0], report["devices"][name]
    print(f"| {seeds} | {devices} | {1e3 * seconds:.1f} | {1e3 * seconds / seeds:.1f} | "
          f"{seconds / median['1']:.2f} |")
  print(f"\n--num_seeds={n} takes {report['ratio']:.2f}x the time of one seed "
        f"({report['ratio_one_device']:.2f}x vmapped on one device; separate runs: {n}x) "
        f"on {report['device']}, {os.cpu_count()} cores; one seed's batch split over "
        f"{report['devices']['1_all_devices']} devices takes "
        f"{median['1_all_devices'] / median['1']:.2f}x")


if __name__ == "__main__":
  command.run(main)
