"""Speed of `rnn_jax.parallel` (DEER, ELK) against the sequential scan, for a GRU.

  python -m benchmarks.parallel [--lengths=1000,10000,100000] [--units=4,16,64]
      [--methods=sequential,quasi_deer,deer,elk] [--batch=4] [--repeats=5]
      [--params=weights.npz] [--max_memory_gb=8] [--out=DIR]

For every (length, units, method): the forward pass (outputs of every step) and a
train step (value_and_grad of the sum of the outputs w.r.t. the params), each jitted,
timed as the median of `--repeats` calls after one call that compiles. The GRU has its
initial weights, or those of `--params` (an npz of kernel, recurrent_kernel, bias: the
units are then its own). Combinations whose Jacobians would not fit `--max_memory_gb`
are reported as "skipped (memory)". Prints a markdown table; writes parallel.json and
parallel.png into `--out`.
"""
from __future__ import annotations

import json
import os
import statistics
import time

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from experiments import command
from rnn_jax import cells, parallel
from rnn_jax.errors import UserError

_LENGTHS = flags.DEFINE_list("lengths", ["1000", "10000", "100000"], "Sequence lengths.")
_UNITS = flags.DEFINE_list("units", ["4", "16", "64"], "GRU sizes.")
_METHODS = flags.DEFINE_list("methods", ["sequential", "quasi_deer", "deer", "elk"],
                             "sequential or any of rnn_jax.parallel.METHODS.")
_BATCH = flags.DEFINE_integer("batch", 4, "Sequences per batch.")
_FEATURES = flags.DEFINE_integer("features", 4, "Input features (without --params).")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls per measurement.")
_PARAMS = flags.DEFINE_string(
    "params", None, "GRU weights: an npz (kernel, recurrent_kernel, bias), or a run's "
    "directory (<workdir>/gru of a forecasting run), whose first GRU layer is used.")
_MAX_MEMORY_GB = flags.DEFINE_float("max_memory_gb", 8.0, "Skip what needs more than this.")
_OUT = flags.DEFINE_string("out", "runs/benchmarks/parallel", "Where the JSON and plot go.")

# Live copies of the [T, batch, D, D] Jacobians (or Kalman elements) during a solve,
# a rough count from the scans' intermediates; quasi methods' train step needs full
# Jacobians for the exact backward pass.
_COPIES = {"deer": 3, "elk": 8, "quasi_deer": 0, "quasi_elk": 0}


def _memory_gb(method, length, batch, units, train):
  if method == "sequential":
    return 0.0
  copies = max(_COPIES[method], 3 if train else 0)
  return (copies * units + 16) * length * batch * units * 4 / 2**30


def _time(fn, *args):
  """(seconds of the first call, median seconds of the next --repeats calls, result)."""
  start = time.perf_counter()
  out = jax.block_until_ready(fn(*args))
  first = time.perf_counter() - start
  times = []
  for _ in range(_REPEATS.value):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return first, statistics.median(times), out


def _measure(method, params, xs, units):
  cell = cells.gru()
  carry = cell.initial_carry(xs.shape[1], units)

  def outputs(params, xs):
    if method == "sequential":
      ys = jax.lax.scan(lambda c, x: cell.step(params, c, x), carry, xs)[1]
      return ys, jnp.int32(xs.shape[0]), jnp.bool_(True)
    sol = parallel.evaluate(cell.step, params, carry, xs, method=method)
    return sol.outputs, sol.iterations, sol.converged

  forward = jax.jit(outputs)
  train = jax.jit(jax.value_and_grad(lambda p, xs: jnp.sum(outputs(p, xs)[0])))
  compile_s, forward_s, (_, iterations, converged) = _time(forward, params, xs)
  _, train_s, _ = _time(train, params, xs)
  return dict(forward_ms=1e3 * forward_s, train_ms=1e3 * train_s, first_call_s=compile_s,
              iterations=int(iterations), converged=bool(converged))


def _plot(rows, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  units = sorted({r["units"] for r in rows})
  fig, axes = plt.subplots(2, len(units), figsize=(4 * len(units), 6.5), squeeze=False)
  for col, d in enumerate(units):
    for row, key in enumerate(("forward_ms", "train_ms")):
      ax = axes[row][col]
      for method in dict.fromkeys(r["method"] for r in rows):
        pts = [(r["length"], r[key]) for r in rows
               if r["units"] == d and r["method"] == method and key in r]
        if pts:
          ax.plot(*zip(*sorted(pts)), marker="o", label=method)
      ax.set(xscale="log", yscale="log", xlabel="sequence length",
             ylabel=key.replace("_ms", " (ms)"), title=f"GRU({d})")
      ax.legend(fontsize=8)
  fig.suptitle(f"rnn_jax.parallel on {_device()}")
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def _load_params(path: str) -> dict:
  """{kernel, recurrent_kernel, bias} from an npz, or the first GRU layer of a run saved by
  `fit` (`rnn_jax.load`: the best checkpoint, whatever devices it was saved on)."""
  if os.path.isfile(path):
    with np.load(path) as npz:
      return {k: jnp.asarray(npz[k]) for k in ("kernel", "recurrent_kernel", "bias")}
  import rnn_jax
  try:
    run = rnn_jax.load(path)
  except UserError as e:
    raise UserError(f"--params={path}: neither an npz nor a run ({e})") from None
  for layer, params in zip(run.model.layers, run.params):
    if getattr(getattr(layer, "cell", None), "name", None) == "gru":
      return {k: jnp.asarray(params[k]) for k in ("kernel", "recurrent_kernel", "bias")}
  raise UserError(f"--params={path}: the run's model has no GRU layer")


def _device():
  device = jax.devices()[0]
  return f"{device.platform}: {device.device_kind}"


def main(argv):
  del argv
  key = jax.random.PRNGKey(0)
  given = None
  if _PARAMS.value:
    given = _load_params(_PARAMS.value)
  rows = []
  for length in map(int, _LENGTHS.value):
    for units in ([given["recurrent_kernel"].shape[0]] if given else map(int, _UNITS.value)):
      features = given["kernel"].shape[0] if given else _FEATURES.value
      params = given or cells.gru().init(key, features, units)
      xs = jax.random.normal(jax.random.fold_in(key, length), (length, _BATCH.value, features))
      for method in _METHODS.value:
        row = dict(method=method, length=length, units=units, batch=_BATCH.value)
        needed = _memory_gb(method, length, _BATCH.value, units, train=True)
        if needed > _MAX_MEMORY_GB.value:
          row["skipped"] = f"memory ({needed:.3g} GB > --max_memory_gb)"
        else:
          row.update(_measure(method, params, xs, units))
        rows.append(row)
        print(json.dumps(row), flush=True)

  print(f"\nrnn_jax.parallel, GRU, batch {_BATCH.value}, on {_device()}\n")
  print("| T | units | method | forward (ms) | train step (ms) | iterations | converged |")
  print("|---|---|---|---|---|---|---|")
  for r in rows:
    if "skipped" in r:
      print(f"| {r['length']} | {r['units']} | {r['method']} | skipped (memory) | | | |")
    else:
      print(f"| {r['length']} | {r['units']} | {r['method']} | {r['forward_ms']:.2f} | "
            f"{r['train_ms']:.2f} | {r['iterations']} | {r['converged']} |")
  os.makedirs(_OUT.value, exist_ok=True)
  with open(os.path.join(_OUT.value, "parallel.json"), "w") as f:
    json.dump(dict(device=_device(), rows=rows), f, indent=1)
  _plot(rows, os.path.join(_OUT.value, "parallel.png"))
  print(f"\nwrote {_OUT.value}/parallel.json, parallel.png")


if __name__ == "__main__":
  command.run(main)
