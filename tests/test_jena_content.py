"""The lecture's Jena CSV is recognised by its content, not only by its bytes: a copy
with Windows line endings, or re-saved by pandas, still gets the lecture's handling."""
import datetime
import functools
import zipfile

import pytest

from rnn_jax.data import jena


@functools.lru_cache(maxsize=1)
def _stamps():
  """The canonical file's first ROWS timestamps, 10 minutes apart (computed once)."""
  start = datetime.datetime(2009, 1, 1, 0, 10)
  step = datetime.timedelta(minutes=10)
  return [(start + i * step).strftime("%d.%m.%Y %H:%M:%S") for i in range(jena.ROWS)]


def _write_jena_like(path, *, rows=jena.ROWS, newline="\n", index=False, last=None):
  """A file with the Jena CSV's header, row count and first and last timestamps (the
  timestamps between are 10 minutes apart, as the canonical file's mostly are)."""
  values = ",".join(["996.52", "-8.02", "265.4", "-8.9", "93.3", "3.33", "3.11", "0.22",
                     "1.94", "3.12", "1307.75", "1.03", "1.75", "152.3"])
  stamps = _stamps()[:rows - 1] + [last or jena.LAST_TIME]
  lines = [(f"{i}," if index else "") + f"{stamp},{values}" for i, stamp in enumerate(stamps)]
  header = ("," if index else "") + ",".join(jena.HEADER)
  with open(path, "w", newline="") as f:
    f.write(newline.join([header, *lines]) + newline)
  return path


@pytest.mark.parametrize("newline,index", [("\r\n", False), ("\n", True)])
def test_same_content_in_another_form_is_recognised(tmp_path, newline, index):
  path = _write_jena_like(tmp_path / "copy.csv", newline=newline, index=index)
  assert jena.is_canonical(path)
  zipped = tmp_path / "copy.zip"
  with zipfile.ZipFile(zipped, "w") as archive:
    archive.write(path, "renamed.csv")
  assert jena.is_canonical(zipped)


def test_other_content_is_not(tmp_path):
  assert not jena.is_canonical(_write_jena_like(tmp_path / "short.csv", rows=jena.ROWS - 1))
  assert not jena.is_canonical(_write_jena_like(tmp_path / "late.csv",
                                                last="01.01.2017 00:10:00"))
  (tmp_path / "other.csv").write_text("a,b\n1,2\n")
  assert not jena.is_canonical(tmp_path / "other.csv")
