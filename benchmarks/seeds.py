"""Train-step time of N seeds vmapped in one program against one seed (rnn_jax.train).

  python -m benchmarks.seeds [--num_seeds=4] [--steps=10] [--rounds=5] [--batch_size=128]

The lecture's GRU(32) -> Dense(1) on Jena-shaped windows <float32>[batch, 240, 14], MAE
loss, RMSprop: the very train step `fit` compiles (`train._make_train_step`), for one seed
(not vmapped) and for --num_seeds seeds (vmapped over the replica axis), on the first
local device. Each round times --steps steps of each, interleaved; reported are the
medians over rounds of the per-step time, and their ratio: N seeds cost `ratio` times one
seed, against N times for N separate runs.
"""
from __future__ import annotations

import json
import platform
import statistics
import time

import jax
import numpy as np
from absl import flags
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rnn_jax import errors, layers, metrics, optim, train

_NUM_SEEDS = flags.DEFINE_integer("num_seeds", 4, "Seeds trained together.", lower_bound=2)
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps per round and variant.", lower_bound=1)
_ROUNDS = flags.DEFINE_integer("rounds", 5, "Rounds (medians are over rounds).", lower_bound=1)
_BATCH = flags.DEFINE_integer("batch_size", 128, "Rows per batch.", lower_bound=1)
_TIME, _FEATURES, _UNITS = 240, 14, 32
# The loop's own pieces, so that the timed step is exactly the one `fit` runs.
_make_train_step = train._make_train_step  # pylint: disable=protected-access
_init_params = train._init_params  # pylint: disable=protected-access
_batch_sharding = train._batch_sharding  # pylint: disable=protected-access


def _variant(num_seeds: int, mesh: Mesh):
  """(step(state) -> state, state) for `num_seeds` replicas, compiled and warmed up."""
  model = layers.Sequential([layers.GRU(_UNITS), layers.Dense(1)])
  optimizer = optim.make("rmsprop", 1e-3)
  step_fn = _make_train_step(model, optimizer, "mae", ("mae",), mesh, num_seeds)
  rng = np.random.default_rng(0)
  lead = [num_seeds] if num_seeds > 1 else []
  x = rng.normal(size=lead + [_BATCH.value, _TIME, _FEATURES]).astype(np.float32)
  y = rng.normal(size=lead + [_BATCH.value, 1]).astype(np.float32)
  weight = np.ones(lead + [_BATCH.value], np.float32)
  seeds = list(range(num_seeds))
  params = _init_params(model, _SampleBatches(x[0] if lead else x), seeds)
  replicated = NamedSharding(mesh, PartitionSpec())
  params = jax.device_put(params, replicated)
  opt_state = (jax.vmap(optimizer.init) if num_seeds > 1 else optimizer.init)(params)
  totals = jax.device_put(metrics.zero_totals("mae", ("mae",), num_seeds), replicated)
  fixed = jax.device_put((np.asarray(seeds if lead else 0, np.int32), np.int32(1)), replicated)
  batch = jax.device_put((x, y, weight), _batch_sharding(mesh, num_seeds))

  def step(state):
    return step_fn(*state, *fixed, *batch)

  state = (params, opt_state, totals)
  start = time.perf_counter()
  state = jax.block_until_ready(step(state))
  compile_s = time.perf_counter() - start
  for _ in range(2):
    state = step(state)
  return step, jax.block_until_ready(state), compile_s


class _SampleBatches:
  """Just enough of a `Batches` for `train._init_params`: one sample batch."""

  def __init__(self, x):
    self.x = x

  def train(self, seed, epoch):
    del seed, epoch
    yield self.x, None, None


def _time(step, state, steps: int):
  start = time.perf_counter()
  for _ in range(steps):
    state = step(state)
  state = jax.block_until_ready(state)
  return (time.perf_counter() - start) / steps, state


def main(argv):
  del argv
  mesh = Mesh(np.array(jax.local_devices()[:1]), ("data",))
  variants = {n: _variant(n, mesh) for n in (1, _NUM_SEEDS.value)}
  states = {n: v[1] for n, v in variants.items()}
  per_step = {n: [] for n in variants}
  for _ in range(_ROUNDS.value):
    for n, (step, _, _) in variants.items():
      seconds, states[n] = _time(step, states[n], _STEPS.value)
      per_step[n].append(seconds)
  median = {n: statistics.median(times) for n, times in per_step.items()}
  n = _NUM_SEEDS.value
  report = {"device": str(jax.local_devices()[0].device_kind), "platform": platform.platform(),
            "shape": [_BATCH.value, _TIME, _FEATURES], "model": f"GRU({_UNITS})->Dense(1)",
            "steps": _STEPS.value, "rounds": _ROUNDS.value,
            "compile_s": {str(k): round(v[2], 3) for k, v in variants.items()},
            "step_ms_median": {str(k): round(1e3 * v, 3) for k, v in median.items()},
            "step_ms_rounds": {str(k): [round(1e3 * t, 3) for t in v]
                               for k, v in per_step.items()},
            "ratio": round(median[n] / median[1], 3)}
  print(json.dumps(report))
  print(f"\n| seeds | step (ms, median of {_ROUNDS.value}) | per seed (ms) |\n|---|---|---|")
  for k, seconds in median.items():
    print(f"| {k} | {1e3 * seconds:.1f} | {1e3 * seconds / k:.1f} |")
  print(f"\n{n} seeds vmapped take {report['ratio']:.2f}x the time of one seed "
        f"(separate runs: {n}x) on {report['device']}")


if __name__ == "__main__":
  errors.run(main)
