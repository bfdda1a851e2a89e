"""The CSV reader: Jena's format, any evenly spaced CSV, and one-line errors for bad files."""
import dataclasses

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st

from rnn_jax.data import timeseries as ts
from rnn_jax.errors import UserError

JENA = ts.CsvSpec(target="T (degC)", time_column="Date Time")
HOURLY = ts.CsvSpec(target="TEMP", time_columns=("year", "month", "day", "hour"),
                    exclude=("No",))


def write(tmp_path, text, name="data.csv"):
  path = tmp_path / name
  path.write_text(text)
  return path


def hourly_csv(rows=6):
  lines = ['"No","year","month","day","hour","TEMP","PRES","wd","station"']
  for i in range(rows):
    lines.append(f'{i + 1},2013,3,1,{i},{-0.7 + i:.1f},{1023 + i},"NNW","Aotizhongxin"')
  return "\n".join(lines) + "\n"


def test_reads_jena_format_dates_and_every_numeric_column(tmp_path):
  path = write(tmp_path, "Date Time,p (mbar),T (degC),wd (deg)\n"
                         "01.01.2009 00:10:00,996.52,-8.02,152.3\n"
                         "01.01.2009 00:20:00,996.57,-8.41,136.1\n"
                         "13.01.2009 00:30:00,996.53,-8.51,171.6\n")
  with pytest.raises(UserError, match="line 4: timestamp .* is 12 days"):
    ts.read_csv(path, JENA)  # day first: 13 January, not an unreadable month 13
  series = ts.read_csv(path, dataclasses.replace(JENA, allow_irregular_time=True))
  assert series.columns == ("p (mbar)", "T (degC)", "wd (deg)")
  assert series.target_index == 1
  np.testing.assert_allclose(series.values[:, 1], [-8.02, -8.41, -8.51])
  assert str(series.times[2]) .startswith("2009-01-13T00:30")
  assert series.spacing == np.timedelta64(10, "m")
  np.testing.assert_array_equal(series.lines, [2, 3, 4])


def test_reads_a_zipped_csv(tmp_path):
  import zipfile
  path = tmp_path / "hourly.zip"
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("hourly.csv", hourly_csv())
  series = ts.read_csv(path, HOURLY)
  assert series.columns == ("TEMP", "PRES")  # No excluded, time and text columns left out


def test_time_from_several_columns_and_text_columns_left_out(tmp_path):
  series = ts.read_csv(write(tmp_path, hourly_csv()), HOURLY)
  assert series.columns == ("TEMP", "PRES")
  assert series.spacing == np.timedelta64(1, "h")
  assert str(series.times[5]).startswith("2013-03-01T05")


def test_missing_cells_are_an_error_naming_lines_and_columns_unless_filled(tmp_path):
  text = hourly_csv().replace(",0.3,", ",NA,").replace(",1025,", ",,")
  path = write(tmp_path, text)
  with pytest.raises(UserError, match=r"2 missing cells in 2 rows, e.g. line 3 column 'TEMP', "
                                      r"line 4 column 'PRES'.*--fill_missing=interpolate"):
    ts.read_csv(path, HOURLY)
  filled = ts.read_csv(path, dataclasses.replace(HOURLY, fill_missing="interpolate"))
  np.testing.assert_allclose(filled.values[:, 0], [-0.7, 0.3, 1.3, 2.3, 3.3, 4.3])
  np.testing.assert_allclose(filled.values[2, 1], 1025)
  forward = ts.read_csv(path, dataclasses.replace(HOURLY, fill_missing="ffill"))
  np.testing.assert_allclose(forward.values[1, 0], -0.7)


@pytest.mark.parametrize("edit, match", [
    (lambda t: t.replace(",1.3,", ",abc,"), r"line 4, column 'TEMP': not a number: 'abc'"),
    (lambda t: t.replace('"TEMP"', '"T"'), r"line 1: no column 'TEMP' \(from --target\)"),
    (lambda t: t.replace(',"NNW","Aotizhongxin"\n3,', ',"NNW"\n3,', 1),
     r"line 3: 8 fields, the header \(line 1\) has 9"),
    (lambda t: t.replace("2013,3,1,3,", "2013,3,1,2,"), r"line 5: timestamp .* repeats line 4"),
    (lambda t: t.replace("2013,3,1,5,", "2013,3,1,9,"),
     r"line 7: timestamp 2013-03-01 09:00:00 is 0 days 05:00:00 after line 6, but the rows are "
     r"0 days 01:00:00 apart"),
    (lambda t: "", r"data.csv: empty file"),
    (lambda t: t.splitlines()[0] + "\n", r"no data rows"),
])
def test_bad_files_are_one_line_user_errors(tmp_path, edit, match):
  with pytest.raises(UserError, match=match) as e:
    ts.read_csv(write(tmp_path, edit(hourly_csv())), HOURLY)
  assert "\n" not in str(e.value)


def test_iso_times_with_offsets_are_read_in_utc(tmp_path):
  path = write(tmp_path, "time,x\n2020-03-29T01:00:00+01:00,1\n2020-03-29T03:00:00+02:00,2\n"
                         "2020-03-29T04:00:00+02:00,3\n")
  series = ts.read_csv(path, ts.CsvSpec(target="x", time_column="time"))
  assert series.spacing == np.timedelta64(1, "h")  # across the change to summer time


def test_missing_file_and_uneven_spacing_hint(tmp_path):
  with pytest.raises(UserError, match="nope.csv: no such file"):
    ts.read_csv(tmp_path / "nope.csv", HOURLY)
  text = hourly_csv().replace("2013,3,1,5,", "2013,3,1,9,")
  with pytest.raises(UserError, match="--allow_irregular_time"):
    ts.read_csv(write(tmp_path, text), HOURLY)


def test_splits_by_rows_or_fractions_not_both():
  assert ts.split_rows(420551) == ts.Split(200000, 300000)
  assert ts.split_rows(1000, train_fraction=0.5, val_fraction=0.25) == ts.Split(500, 750)
  with pytest.raises(UserError, match="--train_end/--val_end or --train_fraction"):
    ts.split_rows(1000, train_end=10, val_end=20, train_fraction=0.5, val_fraction=0.2)
  with pytest.raises(UserError, match="--val_end"):
    ts.split_rows(1000)  # the lecture's rows are beyond this file


def test_normalization_guards_constant_columns():
  values = np.array([[1.0, 5.0], [3.0, 5.0], [5.0, 5.0]])
  norm = ts.Normalization.fit(values[:2])
  out = norm(values)
  assert np.all(np.isfinite(out))
  np.testing.assert_allclose(out[:, 0], [-1, 1, 3])
  np.testing.assert_array_equal(out[:, 1], 0)


_cell = st.one_of(st.floats(-1e6, 1e6, allow_nan=False).map(lambda v: f"{v:.6g}"),
                  st.sampled_from(["", "NA", "nan"]))


@settings(max_examples=30, deadline=None)
@given(table=st.lists(st.lists(_cell, min_size=3, max_size=3), min_size=2, max_size=30))
def test_property_reader_agrees_with_pandas_or_names_the_missing_cells(tmp_path_factory, table):
  rows = ["t,a,b,c"] + [f"{2000 + i}-01-01,{','.join(r)}" for i, r in enumerate(table)]
  path = tmp_path_factory.mktemp("p") / "p.csv"
  path.write_text("\n".join(rows) + "\n")
  spec = ts.CsvSpec(target="a", time_column="t", allow_irregular_time=True)
  expected = pd.read_csv(path)[["a", "b", "c"]].to_numpy(np.float64)
  missing = np.isnan(expected)
  try:
    series = ts.read_csv(path, spec)
  except UserError as e:
    assert missing.any()
    row, col = map(int, np.argwhere(missing)[0])
    assert f"line {row + 2} column '{'abc'[col]}'" in str(e)
    return
  assert not missing.any()
  assert series.columns == ("a", "b", "c")
  np.testing.assert_allclose(series.values, expected)
  np.testing.assert_array_equal(series.lines, np.arange(2, len(table) + 2))
