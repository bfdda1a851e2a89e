"""The IMDB pipeline against Keras's own functions, on hand-made reviews and archives."""
import hashlib
import http.server
import io
import os
import tarfile
import threading

import numpy as np
import pytest

from rnn_jax.data import download, imdb
from rnn_jax.errors import UserError

REVIEWS = {  # (split, label) -> texts; ids are their positions, ratings made up
    ("train", "pos"): ["A great, great film!<br /><br />Loved it.", "Great acting; a joy.",
                       "I loved the film's score."],
    ("train", "neg"): ["A bad film. Bad, bad acting.", "Boring<br />and bad.", "Don't watch it."],
    ("test", "pos"): ["Great film, loved it", "A joy! Unseenword."],
    ("test", "neg"): ["Bad film", "Boring, boring film; bad."],
}


def many_reviews_archive(path, copies=8):
  """`make_archive` with each of REVIEWS `copies` times, numbered: enough rows to train on."""
  return make_archive(path, {key: [f"{text} number {i}" for i in range(copies) for text in texts]
                             for key, texts in REVIEWS.items()})


def make_archive(path, reviews=REVIEWS, extra=(), mode="w:gz"):
  """A small aclImdb tar(.gz), members in scrambled order, plus `extra` (name, bytes)."""
  members = [(f"aclImdb/{split}/{label}/{i}_{8 if label == 'pos' else 2}.txt", text.encode())
             for (split, label), texts in reviews.items() for i, text in enumerate(texts)]
  members = members[::2] + members[1::2] + list(extra)
  with tarfile.open(path, mode) as tar:
    for name, data in [("aclImdb/README", b"readme")] + members:
      info = tarfile.TarInfo(name)
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
  return path


def _cache_files(directory):
  return sorted(os.listdir(directory)) if os.path.isdir(directory) else []


# --- tokenizer, ranks, Keras steps ------------------------------------------------------


@pytest.mark.parametrize("text", [
    "Hello, World! It's 10/10 -- isn't it?", "tabs\tand\nnewlines  and  spaces",
    "UPPER lower MiXeD", "naïve café — ünïcode", "", "!!!", "a.b,c;d:e(f)g[h]i{j}k<l>m"])
def test_tokenize_is_keras_text_to_word_sequence(text):
  from keras.src.legacy.preprocessing.text import text_to_word_sequence
  assert imdb.tokenize(text) == text_to_word_sequence(text)


def test_tokenize_drops_break_tags():
  assert imdb.tokenize("One.<br /><br />Two<BR>three<br/>") == ["one", "two", "three"]


def test_ranks_by_training_frequency_then_alphabetically():
  rank = imdb.rank_words([["b", "a", "c", "a"], ["c", "d", "a"]])
  assert rank == {"a": 1, "c": 2, "b": 3, "d": 4}


@pytest.mark.parametrize("padding", ["pre", "post"])
@pytest.mark.parametrize("truncating", ["pre", "post"])
@pytest.mark.parametrize("maxlen", [None, 1, 4, 9])
def test_pad_sequences_is_keras(padding, truncating, maxlen):
  import keras
  rng = np.random.default_rng(0)
  seqs = [list(rng.integers(1, 50, size=n)) for n in (0, 1, 3, 4, 5, 8, 0, 2)]
  ours = imdb.pad_sequences(seqs, maxlen, padding=padding, truncating=truncating)
  theirs = keras.utils.pad_sequences(seqs, maxlen, padding=padding, truncating=truncating)
  assert ours.dtype == np.int32
  np.testing.assert_array_equal(ours, theirs)


def _write_keras_npz(path, x_train, y_train, x_test, y_test):
  as_objects = lambda xs: np.array([[int(v) for v in x] for x in xs] + [None], dtype=object)[:-1]
  np.savez(path, x_train=as_objects(x_train), y_train=np.array(y_train),
           x_test=as_objects(x_test), y_test=np.array(y_test))


@pytest.mark.parametrize("num_words", [None, 6, 8, 12])
def test_npz_indexing_is_keras_load_data(tmp_path, monkeypatch, num_words):
  import keras.src.datasets.imdb as keras_imdb
  rng = np.random.default_rng(1)
  x_train = [rng.integers(1, 10, size=n) for n in rng.integers(1, 12, size=17)]
  x_test = [rng.integers(1, 10, size=n) for n in rng.integers(1, 12, size=9)]
  y_train, y_test = rng.integers(0, 2, size=17), rng.integers(0, 2, size=9)
  path = tmp_path / "imdb.npz"
  _write_keras_npz(path, x_train, y_train, x_test, y_test)
  monkeypatch.setattr(keras_imdb, "get_file", lambda **kwargs: str(path))
  (kx_train, ky_train), (kx_test, ky_test) = keras_imdb.load_data(num_words=num_words)

  ranked = imdb.read_keras_npz(path)
  (x_train, y_train), (x_test, y_test) = imdb.index_like_keras(
      ranked.x_train, ranked.y_train, ranked.x_test, ranked.y_test, num_words=num_words)
  assert [list(x) for x in x_train] == [list(x) for x in kx_train]
  assert [list(x) for x in x_test] == [list(x) for x in kx_test]
  np.testing.assert_array_equal(y_train, ky_train)
  np.testing.assert_array_equal(y_test, ky_test)

  data = imdb.load(path, num_words=num_words, maxlen=7)
  np.testing.assert_array_equal(data.x_train, imdb.pad_sequences(kx_train, 7))
  np.testing.assert_array_equal(data.y_test, ky_test.astype(np.float32))


def test_hand_made_index_mapping():
  # Ranks 1..4; with index_from=3 rank r is id r+3; num_words=6 keeps ids < 6: ranks 1, 2.
  (x_train, _), (x_test, _) = imdb.index_like_keras(
      [[1, 2, 3, 4]], [1], [[4, 1]], [0], num_words=6)
  assert x_train[0].tolist() == [1, 4, 5, 2, 2]
  assert x_test[0].tolist() == [1, 2, 4]


def test_npz_refuses_pickled_code(tmp_path):
  class Evil:
    def __reduce__(self):
      return (os.system, ("echo pwned",))
  path = tmp_path / "imdb.npz"
  np.savez(path, x_train=np.array([Evil()], dtype=object), y_train=np.array([1]),
           x_test=np.array([Evil()], dtype=object), y_test=np.array([0]))
  with pytest.raises(UserError, match=r"imdb\.npz: truncated or corrupt npz .*refusing"):
    imdb.read_keras_npz(path)


# --- the archive ------------------------------------------------------------------------


def test_archive_end_to_end(tmp_path):
  archive = make_archive(tmp_path / "aclImdb_v1.tar.gz")
  cache = tmp_path / "cache"
  data = imdb.load(archive, num_words=9, maxlen=6, cache_dir=cache)
  assert data.x_train.shape == (6, 6) and data.x_test.shape == (4, 6)
  assert data.x_train.dtype == np.int32 and data.y_train.dtype == np.float32
  assert sorted(data.y_train) == [0, 0, 0, 1, 1, 1] and sorted(data.y_test) == [0, 0, 1, 1]
  # Training counts: bad 4; a, great 3; acting, film, it, loved 2; ... ("film's" is a word).
  assert data.words[:7] == ("bad", "a", "great", "acting", "film", "it", "loved")
  # Ids are rank + 3; num_words=9 keeps ids 4..8, i.e. bad, a, great, acting, film.
  reviews = {imdb.decode(x, data.words): y for x, y in zip(data.x_train, data.y_train)}
  assert reviews == {
      "a great great film [OOV] [OOV]": 1,  # 7 ids, truncated at the front: [START] cut
      "[START] great acting a [OOV]": 1,
      "[START] [OOV] [OOV] [OOV] [OOV] [OOV]": 1,
      "a bad film bad bad acting": 0,
      "[START] [OOV] [OOV] bad": 0,  # "Boring<br />and bad."
      "[START] [OOV] [OOV] [OOV]": 0}
  test_reviews = {imdb.decode(x, data.words): y for x, y in zip(data.x_test, data.y_test)}
  # "unseenword" never occurs in training: dropped, not OOV, as in Keras's imdb.npz.
  assert test_reviews["[START] a [OOV]"] == 1
  short = [x for x in data.x_test if imdb.decode(x, data.words) == "[START] bad film"]
  assert short[0].tolist() == [0, 0, 0, 1, 4, 8]  # padded at the front


@pytest.mark.parametrize("reverse", [False, True])
def test_encode_is_load_from_the_texts(tmp_path, reverse):
  """rnn_jax.load's encoding of raw review texts (what preprocessing.json records, the
  reversed-review LSTM's reversal included) gives exactly `load`'s test rows."""
  archive = make_archive(tmp_path / "aclImdb_v1.tar.gz")
  settings = dict(num_words=9, maxlen=6)
  data = imdb.load(archive, cache_dir=tmp_path / "cache", reverse=reverse, **settings)
  prep = imdb.preprocessing(data, reverse=reverse, **settings)
  assert prep["reverse"] is reverse
  texts = [text for label in ("pos", "neg") for text in REVIEWS["test", label]]
  encoded = imdb.encode(texts, prep.pop("vocabulary"), **prep)
  assert sorted(map(tuple, encoded.tolist())) == sorted(map(tuple, data.x_test.tolist()))


def test_archive_order_does_not_matter(tmp_path):
  a = imdb.load(make_archive(tmp_path / "a.tar.gz"), maxlen=10, cache_dir=tmp_path / "c")
  scrambled = {key: texts for key, texts in reversed(REVIEWS.items())}
  b = imdb.load(make_archive(tmp_path / "b.tar", scrambled, mode="w"), maxlen=10,
                cache_dir=tmp_path / "c")
  for x, y in zip(a, b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_seed_113_shuffle_mixes_classes(tmp_path):
  many = {key: [f"review {i} {key[1]}" for i in range(30)] for key in REVIEWS}
  data = imdb.load(make_archive(tmp_path / "m.tar.gz", many), maxlen=5, cache_dir=tmp_path)
  validation = data.y_train[int(len(data.y_train) * 0.8):]
  assert 0 < validation.mean() < 1
  batches = imdb.batches(data, batch_size=4, validation_split=0.2)
  assert (batches.steps_per_epoch, batches.val_steps, batches.test_steps) == (12, 3, 15)


def test_tokenized_archive_is_cached(tmp_path, monkeypatch):
  archive = make_archive(tmp_path / "aclImdb_v1.tar.gz")
  cache = tmp_path / "cache"
  first = imdb.load(archive, maxlen=8, cache_dir=cache)
  (cached,) = _cache_files(cache)
  assert cached.startswith("aclImdb-ranks-") and cached.endswith(".npz")
  monkeypatch.setattr(imdb, "rank_archive", lambda path: pytest.fail("re-tokenized"))
  second = imdb.load(archive, maxlen=8, cache_dir=cache)
  for x, y in zip(first, second):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  # A changed archive (size/mtime) is a different source: tokenized afresh.
  make_archive(archive, extra=[("aclImdb/train/pos/99_9.txt", b"New words here")])
  with pytest.raises(pytest.fail.Exception, match="re-tokenized"):
    imdb.load(archive, maxlen=8, cache_dir=cache)


def test_download_then_load(tmp_path, monkeypatch):
  body = make_archive(tmp_path / "served.tar.gz").read_bytes()

  class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
      self.send_response(200)
      self.send_header("Content-Length", str(len(body)))
      self.end_headers()
      self.wfile.write(body)

    def log_message(self, *args):
      pass

  httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
  threading.Thread(target=httpd.serve_forever, daemon=True).start()
  try:
    url = f"http://127.0.0.1:{httpd.server_address[1]}/aclImdb_v1.tar.gz"
    monkeypatch.setattr(imdb, "ACLIMDB_URL", url)
    monkeypatch.setattr(imdb, "ACLIMDB_SHA256", hashlib.sha256(body).hexdigest())
    cache = tmp_path / "cache"
    data = imdb.load(num_words=8, maxlen=6, cache_dir=cache)
  finally:
    httpd.shutdown()
    httpd.server_close()
  assert data.x_train.shape == (6, 6)
  assert (cache / "aclImdb_v1.tar.gz").read_bytes() == body
  local = imdb.load(tmp_path / "served.tar.gz", num_words=8, maxlen=6, cache_dir=tmp_path / "c2")
  np.testing.assert_array_equal(data.x_test, local.x_test)


# --- bad input --------------------------------------------------------------------------


def _good_bytes(tmp_path):
  return make_archive(tmp_path / "good.tar.gz").read_bytes()


@pytest.mark.parametrize("case, message", [
    ("missing", r"bad\.tar\.gz: no such file"),
    ("empty", r"bad\.tar\.gz: empty file"),
    ("truncated", r"bad\.tar\.gz: truncated or corrupt archive"),
    ("garbage", r"bad\.tar\.gz: truncated or corrupt archive"),
    ("gzip_trailer_cut", r"bad\.tar\.gz: truncated or corrupt archive .*end-of-stream"),
    ("no_test_neg", r"bad\.tar\.gz: not an aclImdb archive: no reviews under aclImdb/test/neg/$"),
    ("not_utf8", r"bad\.tar\.gz: aclImdb/train/pos/7_9\.txt: not UTF-8 text"),
    ("directory", r"bad\.tar\.gz: cannot read"),
])
def test_bad_archives_are_one_line_errors(tmp_path, case, message):
  path = tmp_path / "bad.tar.gz"
  if case == "empty":
    path.write_bytes(b"")
  elif case == "truncated":
    path.write_bytes(_good_bytes(tmp_path)[:-200])
  elif case == "gzip_trailer_cut":  # all members intact, the gzip CRC/length missing
    path.write_bytes(_good_bytes(tmp_path)[:-4])
  elif case == "garbage":
    path.write_bytes(np.random.default_rng(0).bytes(3000))
  elif case == "no_test_neg":
    make_archive(path, {k: v for k, v in REVIEWS.items() if k != ("test", "neg")})
  elif case == "not_utf8":
    make_archive(path, extra=[("aclImdb/train/pos/7_9.txt", b"caf\xe9")])
  elif case == "directory":
    path.mkdir()
  cache = tmp_path / "cache"
  with pytest.raises(UserError, match=message) as e:
    imdb.load(path, cache_dir=cache)
  assert "\n" not in str(e.value)
  assert _cache_files(cache) == []


def test_bad_npz_is_a_one_line_error(tmp_path):
  path = tmp_path / "imdb.npz"
  np.savez(path, x_train=np.zeros(3))
  with pytest.raises(UserError, match=r"imdb\.npz: not a Keras imdb\.npz: no y_train, x_test"):
    imdb.load(path)
  path.write_bytes(b"PK\x03\x04 not really a zip")
  with pytest.raises(UserError, match=r"imdb\.npz: truncated or corrupt npz"):
    imdb.load(path)


# --- the experiment ---------------------------------------------------------------------


def _run_experiment(tmp_path, *flags, timeout=600, cache=None):
  import json
  import subprocess
  import sys
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, RNN_JAX_DATA_CACHE=str(cache or tmp_path / "cache"))
  proc = subprocess.run([sys.executable, "-m", "experiments.imdb_sentiment", *flags],
                        cwd=repo, env=env, capture_output=True, text=True, timeout=timeout)
  results = sorted((tmp_path / "run").glob("*/results.json"))  # <workdir>/<model>/
  return proc, (json.loads(results[0].read_text()) if results else None)


@pytest.mark.e2e
def test_experiment_end_to_end(tmp_path):
  many = {key: [f"{text} number {i}" for i in range(8) for text in texts]
          for key, texts in REVIEWS.items()}
  archive = make_archive(tmp_path / "aclImdb_v1.tar.gz", many)
  proc, results = _run_experiment(
      tmp_path, f"--data_path={archive}", f"--workdir={tmp_path / 'run'}",
      "--model=bidirectional_lstm", "--mask_zero", "--recurrent_dropout=0.2", "--maxlen=20",
      "--max_features=30", "--units=4", "--embedding_dim=4", "--batch_size=8", "--epochs=1")
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert results["experiment"] == "imdb_sentiment" and results["model"] == "bidirectional_lstm"
  assert results["flags"]["maxlen"] == 20 and results["flags"]["mask_zero"] is True
  assert results["data"] == {"source": str(archive), "train_reviews": 48, "test_reviews": 32,
                             "vocabulary": len(imdb.load(archive, maxlen=1,
                                                         cache_dir=tmp_path / "c").words)}
  (epoch,) = results["history"]
  assert 0.0 <= epoch["val_accuracy"] <= 1.0 and np.isfinite(epoch["loss"])
  assert 0.0 <= results["test"]["accuracy"] <= 1.0 and results["best_epoch"] == [1]
  assert (tmp_path / "run" / "bidirectional_lstm" / "history.png").is_file()


@pytest.mark.parametrize("flag, message", [
    ("--data_path={tmp}/missing.tar.gz", "error: {tmp}/missing.tar.gz: no such file\n"),
    ("--max_features=3", "error: --max_features must be at least 4 (ids 0-2 are padding, "
                         "start, OOV), got 3\n"),
])
@pytest.mark.e2e
def test_experiment_bad_input_is_one_line(tmp_path, flag, message):
  proc, results = _run_experiment(tmp_path, flag.format(tmp=tmp_path),
                                  f"--workdir={tmp_path / 'run'}")
  assert proc.returncode == 2
  assert proc.stderr.endswith(message.format(tmp=tmp_path))
  assert "Traceback" not in proc.stderr and results is None
  assert not (tmp_path / "run").exists() and _cache_files(tmp_path / "cache") == []


@pytest.mark.slow
@pytest.mark.parametrize("model", ["lstm", "bidirectional_lstm"])
def test_lecture_accuracy_on_the_real_reviews(tmp_path, model):
  """The acceptance run (~2 / ~4 min on 2 CPU cores): the lecture's settings reach 0.87
  test accuracy with the best checkpoint. $RNN_JAX_IMDB_PATH, else the shared copy, else
  the canonical download."""
  shared = "/work/shared/data/aclImdb_v1.tar.gz"
  data_path = os.environ.get("RNN_JAX_IMDB_PATH") or (shared if os.path.exists(shared) else None)
  proc, results = _run_experiment(
      tmp_path, f"--model={model}", f"--workdir={tmp_path / 'run'}",
      *([f"--data_path={data_path}"] if data_path else []), timeout=3600,
      cache=download.default_cache_dir())
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert results["test"]["accuracy"] >= 0.87, results["test"]
