"""benchmarks.run: its report, its lecture generator, its flag errors (no timing here)."""
import subprocess
import sys

import numpy as np
import pytest

from benchmarks import run, tasks

pytestmark = pytest.mark.e2e  # subprocess runs of the experiments: see pyproject.toml


def test_lecture_generator_matches_rnn_jax_windows():
  # The transcription of the lecture's generator and rnn_jax's sampler cut the same
  # windows: so the sampler benchmark compares like with like.
  data = np.random.default_rng(0).standard_normal((400, 3)).astype(np.float32)
  from rnn_jax.data import windows
  generator = run.lecture_generator(data, lookback=24, delay=6, min_index=0, max_index=300,
                                    batch_size=8, step=4)
  samples, targets = next(generator)
  rows = np.arange(24, 32)  # the ordered generator's first batch
  x, y = windows.gather(data, rows, lookback=24, step=4, delay=6, target_index=1)
  np.testing.assert_allclose(samples, x, rtol=1e-6)
  np.testing.assert_allclose(targets, y[:, 0], rtol=1e-6)


def test_markdown_table_divides_by_rnn_jax():
  results = [
      {"framework": "rnn_jax", "task": "jena_gru", "median_step_s": 0.010},
      {"framework": "flax", "task": "jena_gru", "median_step_s": 0.035},
      {"framework": "torch", "task": "jena_gru", "unsupported": "no"},
  ]
  table = run.markdown_table(results, ["jena_gru"], ["rnn_jax", "flax", "torch"])
  row = table.splitlines()[2]
  assert "10.0 ms" in row and "35.0 ms (3.50x)" in row and "unsupported" in row


def test_flops_of_jena_gru_under_one_gflop():
  assert 0.5e9 < tasks.flops_per_step(tasks.TASKS["jena_gru"]) < 1e9


def test_unknown_task_is_one_line_error():
  done = subprocess.run([sys.executable, "-m", "benchmarks.run", "--tasks=nope"],
                        capture_output=True, text=True)
  assert done.returncode == 2
  assert done.stderr.strip().splitlines() == [
      f"error: --tasks: unknown task 'nope'; known: {', '.join(tasks.TASKS)}"]


def test_seeds_benchmark_reports_each_variant():
  """benchmarks.seeds runs (one tiny round) and reports one seed on one device and on the
  devices `fit` makes, N seeds spread over them, and N seeds on one device, with ratios."""
  import json
  import os
  done = subprocess.run([sys.executable, "-m", "benchmarks.seeds", "--num_seeds=2", "--steps=1",
                         "--rounds=1", "--batch_size=8"], capture_output=True, text=True,
                        timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert done.returncode == 0, done.stderr[-2000:]
  report = json.loads(done.stdout.splitlines()[0])
  from rnn_jax import train  # pylint: disable=import-outside-toplevel
  all_devices = train.cpu_device_count(2, 8, min(os.cpu_count() or 1, train.MAX_CPU_DEVICES))
  assert report["devices"] == {"1": 1, "1_all_devices": all_devices, "2": all_devices,
                               "2_one_device": 1}
  assert set(report["step_ms_median"]) == {"1", "1_all_devices", "2", "2_one_device"}
  assert report["ratio"] > 0 and report["ratio_one_device"] > 0
  assert "--num_seeds=2 takes" in done.stdout


@pytest.mark.slow  # ten frameworks, each in its own process: ~1 min
def test_every_framework_times_a_step():
  """One timed step of every framework on jena_gru: each peer module runs (or says it is
  unsupported or not installed), none fails."""
  import json
  done = subprocess.run([sys.executable, "-m", "benchmarks.run", "--tasks=jena_gru",
                         "--steps=1", "--sections=steps"], capture_output=True, text=True,
                        timeout=600)
  assert done.returncode == 0, done.stderr[-2000:]
  records = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
  assert {r["framework"] for r in records} == set(run.FRAMEWORKS)
  for record in records:
    assert "error" not in record, record
    unsupported = record.get("unsupported", "")
    assert ("median_step_s" in record or "not installed" in unsupported
            or record["framework"] == "jax_cudnn" and "GPU" in unsupported
            or record["framework"] == "rnn_jax_cudnn" and "not on cpu" in unsupported
            or record["framework"] == "rnn_jax_native" and "no native kernel" in unsupported
            or record["framework"] == "rnn_jax_pallas" and "interpreted" in unsupported
            ), record


def test_gpu_script_dry_run_lists_every_pair_and_skips_the_gpu_only_peers():
  """benchmarks.gpu --dry-run starts on this CPU: every (task, framework) it would time is
  listed, the peers that need a GPU are reported skipped, nothing is timed; without
  --dry-run on a CPU it refuses in one line."""
  from benchmarks import gpu
  done = subprocess.run([sys.executable, "-m", "benchmarks.gpu", "--dry-run"],
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  rows = [line.split("\t") for line in done.stdout.splitlines() if not line.startswith("#")]
  assert {(r[1], r[2]) for r in rows} == {(t, f) for t in gpu.TASKS for f in gpu.FRAMEWORKS}
  assert len(rows) == len(gpu.TASKS) * len(gpu.FRAMEWORKS)
  by_pair = {(r[1], r[2]): r for r in rows}
  for framework in gpu.GPU_ONLY:
    assert by_pair[("imdb_lstm", framework)][0] == "skip"
    assert "needs a GPU" in by_pair[("imdb_lstm", framework)][3]
  assert by_pair[("jena_gru", "rnn_jax")][0] == "time"
  assert by_pair[("jena_min_gru", "torch")][3] == "skipped: no minGRU / minLSTM layer"
  assert "nothing was timed" in done.stdout and '"median_step_s"' not in done.stdout
  assert "rnn_jax_pallas" in run.ACCELERATOR_FRAMEWORKS
  refused = subprocess.run([sys.executable, "-m", "benchmarks.gpu"], capture_output=True,
                           text=True, timeout=300)
  assert refused.returncode == 2 and "no GPU" in refused.stderr


def test_gpu_plan_times_every_pair_a_gpu_computes():
  # On a GPU the plan skips only what a framework cannot compute: cuDNN's LSTMs, the
  # Pallas kernels and the peers are timed wherever they have the layer.
  from benchmarks import gpu
  timed = {(p["task"], p["framework"]) for p in gpu.plan() if p["action"] == "time"}
  assert {("imdb_lstm", f) for f in gpu.FRAMEWORKS} <= timed
  assert {("jena_gru_dropout", "rnn_jax_pallas"), ("jena_min_gru", "rnn_jax_pallas"),
          ("imdb_min_lstm", "rnn_jax_pallas")} <= timed
  assert ("jena_gru", "rnn_jax_cudnn") not in timed and ("jena_gru_dropout", "torch") not in timed


def test_the_estimate_prints_every_task_and_source():
  from benchmarks import estimate
  text = estimate.tables()
  for name in estimate.TASKS:
    assert text.count(f"| {name} |") == 2
  for constants in (estimate.H100, estimate.TPU_V5E):
    for c in constants.values():
      assert c.source in text and c.low <= c.mid <= c.high
  # The model's claim the first measurement tests: the persistent kernel is several times
  # faster than the scan on the lecture's GRU and LSTM, even at the ends of the ranges.
  for name in ("jena_gru", "imdb_lstm"):
    task = tasks.TASKS[name]
    assert (estimate.h100_seconds(task, "fused", "low")
            > 5 * estimate.h100_seconds(task, "pallas", "high"))


def test_parallel_benchmark_reports_iterations_and_reads_a_runs_weights(tmp_path):
  """benchmarks.parallel on a tiny grid: the table, its JSON and plot; `--params` read
  from a run that `fit` wrote (its first GRU layer, through `rnn_jax.load`)."""
  from rnn_jax import layers, train
  from rnn_jax.data.batches import ArrayBatches
  rng = np.random.default_rng(0)
  x = rng.uniform(size=(64, 6, 3)).astype(np.float32)
  batches = ArrayBatches.from_arrays(x, x[:, :, :1].sum(axis=1), validation_split=0.25,
                                     batch_size=16)
  options = train.TrainOptions(experiment="test", model_name="gru", workdir=str(tmp_path / "gru"),
                               epochs=1, optimizer="adam", flags={"seed": 0})
  train.fit(layers.Sequential([layers.GRU(5), layers.Dense(1)]), batches, loss="mse",
            options=options)
  bad = subprocess.run([sys.executable, "-m", "benchmarks.parallel", f"--params={tmp_path}"],
                       capture_output=True, text=True, timeout=600)
  assert bad.returncode != 0 and bad.stderr.startswith("error: --params=")
  assert "Traceback" not in bad.stderr
  proc = subprocess.run(
      [sys.executable, "-m", "benchmarks.parallel", "--lengths=30", "--repeats=1",
       "--methods=sequential,deer", f"--params={tmp_path / 'gru'}",
       f"--out={tmp_path / 'out'}"], capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  rows = [line for line in proc.stdout.splitlines() if line.startswith("| 30 |")]
  assert len(rows) == 2 and all("| 5 |" in row for row in rows), proc.stdout
  deer = next(row for row in rows if "| deer |" in row)
  assert int(deer.split("|")[6]) >= 1 and "True" in deer
  assert (tmp_path / "out" / "parallel.json").exists()
  assert (tmp_path / "out" / "parallel.png").stat().st_size > 0
