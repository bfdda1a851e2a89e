"""Same flags and seed: the same numbers, across processes and across device counts."""
import math

import pytest

import training_runs as runs


def test_two_processes_and_four_devices_agree(tmp_path):
  first, second, four = tmp_path / "first", tmp_path / "second", tmp_path / "four"
  for workdir, flags, env in [
      (first, [], {}), (second, [], {}),
      (four, ["--num_devices=4"], {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"})]:
    done = runs.run(workdir, *flags, **env)
    assert done.returncode == 0, done.stderr
  reference = runs.comparable(runs.results(first))
  assert runs.comparable(runs.results(second)) == reference

  sharded = runs.comparable(runs.results(four))
  assert runs.results(four)["flags"]["num_devices"] == 4
  assert len(sharded["history"]) == len(reference["history"]) == 3
  for row_4, row_1 in zip(sharded["history"], reference["history"]):
    assert row_4.keys() == row_1.keys()
    for key in row_1:
      assert math.isclose(row_4[key], row_1[key], rel_tol=1e-5), (key, row_4[key], row_1[key])
  assert sharded["best_epoch"] == reference["best_epoch"]
  assert sharded["test"]["loss"] == pytest.approx(reference["test"]["loss"], rel=1e-5)
