"""Checkpoints: round trip, pruning, and detection of half-written or corrupted ones."""
import os

import jax.numpy as jnp
import numpy as np
import pytest

from rnn_jax.io import checkpoints


def _state(value):
  return {"w": jnp.full((3, 2), value, jnp.float32), "count": jnp.asarray(int(value), jnp.int32)}


def _save(directory, epoch, **kwargs):
  return checkpoints.save(directory, f"epoch{epoch:06d}", _state(epoch), {"epoch": epoch},
                          **kwargs)


def test_round_trip_and_keeps_the_newest_two(tmp_path):
  for epoch in (1, 2, 3):
    _save(tmp_path, epoch)
  assert checkpoints.committed(tmp_path) == ["epoch000002", "epoch000003"]
  assert sorted(os.listdir(tmp_path)) == ["epoch000002", "epoch000002.sha256",
                                          "epoch000003", "epoch000003.sha256"]
  name, state, meta = checkpoints.restore(tmp_path, _state(0))
  assert (name, meta) == ("epoch000003", {"epoch": 3})
  np.testing.assert_array_equal(state["w"], np.full((3, 2), 3.0))
  assert int(state["count"]) == 3


def test_uncommitted_checkpoint_is_ignored_and_cleaned_up(tmp_path):
  _save(tmp_path, 1)

  class Killed(Exception):
    pass

  def die():
    raise Killed()

  with pytest.raises(Killed):  # files written, commit marker not: as if killed there
    _save(tmp_path, 2, before_commit=die)
  assert checkpoints.committed(tmp_path) == ["epoch000001"]
  assert checkpoints.restore(tmp_path, _state(0))[0] == "epoch000001"
  _save(tmp_path, 3)
  assert sorted(os.listdir(tmp_path)) == ["epoch000001", "epoch000001.sha256",
                                          "epoch000003", "epoch000003.sha256"]


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_corrupted_checkpoint_is_reported_and_the_previous_one_used(tmp_path, damage):
  _save(tmp_path, 1)
  path = _save(tmp_path, 2)
  files = sorted((p for p in path.rglob("*") if p.is_file()), key=lambda p: -p.stat().st_size)
  victim = files[0]  # the largest file: array data
  data = victim.read_bytes()
  if damage == "truncate":
    victim.write_bytes(data[:len(data) // 2])
  elif damage == "flip":
    victim.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
  else:
    victim.unlink()
  reports = []
  name, state, _ = checkpoints.restore(tmp_path, _state(0), report=reports.append)
  assert name == "epoch000001" and int(state["count"]) == 1
  assert len(reports) == 1 and "epoch000002" in reports[0] and "\n" not in reports[0]


def test_no_checkpoint(tmp_path):
  assert checkpoints.restore(tmp_path / "missing", _state(0)) is None


def test_write_atomic_replaces_whole_file(tmp_path):
  path = tmp_path / "results.json"
  checkpoints.write_atomic(path, "old")
  checkpoints.write_atomic(path, "new")
  assert path.read_text() == "new" and os.listdir(tmp_path) == ["results.json"]
