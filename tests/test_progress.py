"""The progress callbacks: the compile step kept out of steps/s and the ETA; the loss every
N steps read back from the device; one line per epoch at 4 significant digits."""
import time
import types

import jax.numpy as jnp
import numpy as np

from rnn_jax.train import logs, progress, results


def test_step_loss_every_n_steps_running_and_recent():
  losses = progress.StepLoss(every=2)
  losses.start_epoch()
  losses.after_step(1, {"loss": jnp.float32(1.0), "count": jnp.float32(1.0)})  # not a multiple
  losses.after_step(2, {"loss": jnp.float32(6.0), "count": jnp.float32(3.0)})
  losses.after_step(4, {"loss": jnp.float32(12.0), "count": jnp.float32(4.0)})
  (step2, running2, recent2), (step4, running4, recent4) = losses.ready(wait=True)
  assert (step2, running2, recent2) == (2, 2.0, 2.0)
  assert (step4, running4, recent4) == (4, 3.0, 6.0)  # (12 - 6) / (4 - 3) since step 2
  assert losses.ready(wait=True) == []


def test_step_loss_per_replica():
  losses = progress.StepLoss(every=1)
  losses.after_step(1, {"loss": jnp.array([2.0, 8.0]), "count": jnp.array([2.0, 2.0])})
  ((_, running, _),) = losses.ready(wait=True)
  np.testing.assert_allclose(running, [1.0, 4.0])


def test_compile_step_is_left_out_of_steps_per_s_and_eta(tmp_path, capsys):
  totals = {"loss": jnp.float32(1.0), "count": jnp.float32(1.0)}
  clock = progress.Clock()
  run = types.SimpleNamespace(  # what fit's loop shows the callbacks (loop.Run)
      options=types.SimpleNamespace(epochs=3, log_every_steps=0), workdir=tmp_path,
      seeds=[0], steps_per_epoch=5, epoch=1, step=0, epochs_done=0, clock=clock,
      state=types.SimpleNamespace(totals=totals), replicas=[{"history": []}])
  callbacks = [progress.ProgressBar(show_bar=False), logs.MetricLogs()]
  for callback in callbacks:
    callback.on_run_start(run)
  clock.start_epoch(0)
  for callback in callbacks:
    callback.on_epoch_start(run)
  time.sleep(0.5)  # the first train step: tracing and compiling
  for step in range(1, 6):
    if clock.compile_seconds is None:
      clock.compiled()
    for callback in callbacks:
      callback.on_step(run, step, totals)
  steps, seconds = clock.end_steps(5)
  assert clock.compile_seconds >= 0.5 and steps == 4 and seconds < 0.25
  row = {"epoch": 1, "loss": 0.000123456, "seconds": 0.6, "steps_per_s": steps / seconds}
  run.rows, run.replicas = [row], [{"history": [row]}]
  for callback in callbacks:
    callback.on_epoch_end(run)
    callback.on_run_end(run)
  out = capsys.readouterr().out
  assert out.startswith("compiled the train step in 0.5 s\n")
  line = out.splitlines()[-1]
  eta = (3 - 1) * (0.6 - clock.compile_seconds)  # two epochs left, each without compiling
  assert f"ETA {results.format_seconds(eta)}" in line and "loss: 0.0001235" in line
  assert (tmp_path / "metrics.csv").read_text().splitlines()[0] == "epoch,loss,seconds,steps_per_s"


def test_metrics_print_with_four_significant_digits():
  assert results.format_metrics({"loss": 0.0001234567, "acc": 0.87654}) == (
      "loss: 0.0001235 - acc: 0.8765")
