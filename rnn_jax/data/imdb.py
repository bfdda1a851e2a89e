"""IMDB movie-review sentiment (Maas et al. 2011), encoded as `keras.datasets.imdb` does.

  data = imdb.load(num_words=10000, maxlen=500)        # the canonical archive, downloaded
  data = imdb.load("/path/aclImdb_v1.tar.gz", ...)      # a local archive (checked structurally)
  data = imdb.load("/path/imdb.npz", ...)               # Keras's own pre-indexed file
  batches = imdb.batches(data, batch_size=128, validation_split=0.2)

From the text of an `aclImdb_v1.tar.gz` archive:

1. Reviews are read in a canonical order, independent of how the archive was packed:
   split, then label (neg before pos), then the numeric review id of `ID_RATING.txt`.
2. `tokenize`: `<br />` tags become spaces, then Keras's `text_to_word_sequence`
   (lower case; the characters of `KERAS_FILTERS` become spaces; split on spaces).
   Apostrophes and digits stay inside words ("don't", "10").
3. Words are ranked 1, 2, ... by their count in the *training* reviews, most frequent
   first; equal counts are ranked alphabetically. Test words never seen in training are
   dropped, as in Keras's `imdb.npz`. The result is what `imdb.npz` holds: one list of
   word ranks per review.

From there on both sources follow `keras.datasets.imdb.load_data` step by step
(`index_like_keras`): the train and then the test reviews are shuffled by one
`np.random.RandomState(seed=113)`, each review becomes `[start_char] + [rank +
index_from]`, and ids `>= num_words` become `oov_char`. With the defaults (start 1, oov
2, index_from 3) word rank r gets id r + 3, so `num_words=10000` keeps ranks 1..9996 as
ids 4..9999; id 0 is padding and id 3 is never used. Finally `pad_sequences` pads and
truncates at the front like `keras.utils.pad_sequences(padding="pre", truncating="pre")`.

Tokenizing the archive takes about half a minute, so the word ranks are cached in
`<cache>/aclImdb-ranks-<key>.npz` (written atomically), keyed by the archive (its
sha256 for the canonical download; path, size and mtime for a local file) and by
`TOKENIZER_VERSION`; `num_words`, `maxlen` and the shuffle are applied afresh on each load.
"""
from __future__ import annotations

import collections
import hashlib
import io
import json
import logging
import os
import pathlib
import pickle
import re
import tarfile
import tempfile
import zipfile
import zlib
from typing import NamedTuple, Optional, Sequence, Union

import numpy as np

from rnn_jax.io import files
from rnn_jax.data import download
from rnn_jax.data.batches import ArrayBatches
from rnn_jax.errors import UserError

PathLike = Union[str, os.PathLike]

ACLIMDB_URL = "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"
ACLIMDB_SHA256 = "c40f74a18d3b61f90feba1e17730e0d38e8b97c05fde7008942e91923d1658fe"

# Bump when `tokenize` or the ranking changes: it is part of the cache key.
TOKENIZER_VERSION = "keras-filters+br/alpha-ties/v1"
KERAS_FILTERS = '!"#$%&()*+,-./:;<=>?@[\\]^_`{|}~\t\n'
_FILTER_TABLE = str.maketrans({c: " " for c in KERAS_FILTERS})
_BREAK_TAG = re.compile(r"<br\s*/?>", re.IGNORECASE)
_REVIEW = re.compile(r"^(?:\./)?aclImdb/(train|test)/(neg|pos)/(\d+)_(\d+)\.txt$")
_SPLITS, _LABELS = ("train", "test"), ("neg", "pos")


class Imdb(NamedTuple):
  """Encoded reviews. x <int32>[reviews, maxlen] word ids (0 = padding), y <float32>[reviews]
  (1 = positive). `words[r - 1]` is the word of rank r (empty for an `imdb.npz` source)."""
  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  words: tuple[str, ...]


class Ranked(NamedTuple):
  """Reviews as word ranks, what Keras's `imdb.npz` holds: lists of <int32>[length] arrays."""
  x_train: list
  y_train: np.ndarray
  x_test: list
  y_test: np.ndarray
  words: tuple[str, ...]


# --- text -> words -> ranks -------------------------------------------------------------


def tokenize(text: str) -> list[str]:
  """Keras's `text_to_word_sequence(text)`, after turning `<br />` tags into spaces."""
  text = _BREAK_TAG.sub(" ", text).lower().translate(_FILTER_TABLE)
  return [word for word in text.split(" ") if word]


def rank_words(tokenized: Sequence[Sequence[str]]) -> dict[str, int]:
  """word -> rank (1 = most frequent), equal counts in alphabetical order."""
  counts = collections.Counter(word for words in tokenized for word in words)
  ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
  return {word: rank for rank, (word, _) in enumerate(ordered, start=1)}


def _to_ranks(tokenized, rank_of: dict[str, int]) -> list:
  """Each review's words as <int32>[length] ranks; words without a rank are dropped."""
  return [np.array([rank_of[w] for w in words if w in rank_of], np.int32) for words in tokenized]


# --- the Keras steps ---------------------------------------------------------------------


def index_like_keras(x_train, y_train, x_test, y_test, *, num_words: Optional[int] = None,
                     seed: int = 113, start_char: Optional[int] = 1,
                     oov_char: Optional[int] = 2, index_from: int = 3):
  """`keras.datasets.imdb.load_data` (maxlen=None, skip_top=0) on word ranks already loaded.

  Args:
    x_train, x_test: sequences of word-rank sequences (the contents of `imdb.npz`).
    y_train, y_test: <int>[reviews] labels.

  Returns:
    ((x_train, y_train), (x_test, y_test)) with x a list of <int32>[length] id arrays.
  """
  rng = np.random.RandomState(seed)
  train_order = np.arange(len(x_train))
  rng.shuffle(train_order)
  test_order = np.arange(len(x_test))
  rng.shuffle(test_order)  # the same generator, drawn after the training shuffle
  xs = ([np.asarray(x_train[i], np.int64) for i in train_order]
        + [np.asarray(x_test[i], np.int64) for i in test_order])
  prefix = np.array([] if start_char is None else [start_char], np.int64)
  xs = [np.concatenate([prefix, x + index_from]) for x in xs]
  if not num_words:
    # As Keras: the largest id seen becomes the limit, so that id itself turns into OOV.
    num_words = max(int(x.max()) for x in xs)
  if oov_char is not None:
    xs = [np.where(x < num_words, x, oov_char).astype(np.int32) for x in xs]
  else:
    xs = [x[x < num_words].astype(np.int32) for x in xs]
  n = len(x_train)
  return ((xs[:n], np.asarray(y_train)[train_order]),
          (xs[n:], np.asarray(y_test)[test_order]))


def pad_sequences(sequences: Sequence[Sequence[int]], maxlen: Optional[int] = None, *,
                  padding: str = "pre", truncating: str = "pre", value: int = 0) -> np.ndarray:
  """`keras.utils.pad_sequences` for integer sequences -> <int32>[len(sequences), maxlen]."""
  if padding not in ("pre", "post") or truncating not in ("pre", "post"):
    raise ValueError(f"padding and truncating must be 'pre' or 'post', got {padding!r}, "
                     f"{truncating!r}")
  lengths = np.array([len(s) for s in sequences], np.int64)
  if maxlen is None:
    maxlen = int(lengths.max(initial=0))
  flat = (np.concatenate([np.asarray(s, np.int64) for s in sequences]) if len(sequences)
          else np.zeros((0,), np.int64))
  starts = np.cumsum(lengths) - lengths
  kept = np.minimum(lengths, maxlen)
  # Where each row's kept tokens begin in `flat` and in the output row.
  first = starts + (lengths - kept if truncating == "pre" else 0)
  offset = maxlen - kept if padding == "pre" else np.zeros_like(kept)
  column = np.arange(maxlen)[None, :]
  source = first[:, None] + column - offset[:, None]
  valid = (column >= offset[:, None]) & (column < (offset + kept)[:, None])
  gathered = flat[np.clip(source, 0, max(len(flat) - 1, 0))] if len(flat) else 0
  return np.where(valid, gathered, value).astype(np.int32)


# --- sources -----------------------------------------------------------------------------


def read_archive(path: PathLike) -> dict[tuple[str, str], list[tuple[int, str]]]:
  """(split, label) -> [(review id, text)] in id order, streamed from an aclImdb tar(.gz).

  Raises:
    UserError: naming the file, when it is missing, unreadable, empty, not a tar, cut
      short, or lacks any of aclImdb/{train,test}/{pos,neg}.
  """
  path = pathlib.Path(path)
  _check_readable(path)
  reviews = {(split, label): [] for split in _SPLITS for label in _LABELS}
  member = None
  try:
    # Not the stream mode "r|*": it takes a gzip cut short for a complete archive.
    with tarfile.open(path, mode="r:*") as tar:
      for member in tar:
        match = _REVIEW.match(member.name)
        if match is None or not member.isfile():
          continue
        split, label, review_id, _ = match.groups()
        data = tar.extractfile(member).read()
        try:
          text = data.decode("utf-8")
        except UnicodeDecodeError as e:
          raise UserError(f"{path}: {member.name}: not UTF-8 text ({e.reason} at byte "
                          f"{e.start})") from None
        reviews[split, label].append((int(review_id), text))
      # Read to the end, so that a compressed archive's length and checksum are checked.
      while tar.fileobj.read(1 << 20):
        pass
  except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
    where = f" after {member.name}" if member is not None else ""
    reason = ("not a tar, tar.gz, tar.bz2 or tar.xz file" if member is None
              and "could not be opened" in str(e) else " ".join(str(e).split()))
    raise UserError(f"{path}: truncated or corrupt archive{where} ({reason})") from None
  missing = [f"aclImdb/{split}/{label}/" for (split, label), found in reviews.items() if not found]
  if missing:
    raise UserError(f"{path}: not an aclImdb archive: no reviews under {', '.join(missing)}")
  for found in reviews.values():
    found.sort()
  return reviews


def rank_archive(path: PathLike) -> Ranked:
  """The archive's reviews as word ranks (steps 1-3 of the module docstring)."""
  reviews = read_archive(path)
  def tokenized(split):
    texts = [(label, text) for label in _LABELS for _, text in reviews[split, label]]
    labels = np.array([_LABELS.index(label) for label, _ in texts], np.int8)
    return [tokenize(text) for _, text in texts], labels
  train_words, y_train = tokenized("train")
  test_words, y_test = tokenized("test")
  rank_of = rank_words(train_words)
  return Ranked(_to_ranks(train_words, rank_of), y_train, _to_ranks(test_words, rank_of),
                y_test, tuple(rank_of))


class _NumpyOnlyUnpickler(pickle.Unpickler):
  """Unpickles numpy arrays and nothing else: an npz must not be able to run code."""
  _ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"),
              ("numpy.core.multiarray", "_reconstruct"),
              ("numpy._core.multiarray", "_reconstruct")}

  def find_class(self, module, name):
    if (module, name) not in self._ALLOWED:
      raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")
    return super().find_class(module, name)


def _read_npy(raw: bytes) -> np.ndarray:
  """One .npy member; object arrays (ragged reviews) through `_NumpyOnlyUnpickler`."""
  stream = io.BytesIO(raw)
  version = np.lib.format.read_magic(stream)
  read_header = (np.lib.format.read_array_header_1_0 if version[0] == 1
                 else np.lib.format.read_array_header_2_0)  # 3.0 differs only in encoding
  _, _, dtype = read_header(stream)
  if dtype.hasobject:
    return _NumpyOnlyUnpickler(stream).load()
  return np.lib.format.read_array(io.BytesIO(raw), allow_pickle=False)


def read_keras_npz(path: PathLike) -> Ranked:
  """Keras's `imdb.npz` (x_train, y_train, x_test, y_test; x as object arrays of rank lists)."""
  path = pathlib.Path(path)
  _check_readable(path)
  keys = ("x_train", "y_train", "x_test", "y_test")
  try:
    with zipfile.ZipFile(path) as archive:
      names = set(archive.namelist())
      missing = [k for k in keys if f"{k}.npy" not in names]
      if missing:
        raise UserError(f"{path}: not a Keras imdb.npz: no {', '.join(missing)}")
      arrays = {k: _read_npy(archive.read(f"{k}.npy")) for k in keys}
    x_train = [np.asarray(x, np.int64) for x in arrays["x_train"]]
    x_test = [np.asarray(x, np.int64) for x in arrays["x_test"]]
  except (zipfile.BadZipFile, EOFError, ValueError, TypeError, pickle.UnpicklingError,
          zlib.error, OSError) as e:
    raise UserError(f"{path}: truncated or corrupt npz ({e})") from None
  for name, x, y in (("train", x_train, arrays["y_train"]), ("test", x_test, arrays["y_test"])):
    if len(x) != len(y) or not len(x):
      raise UserError(f"{path}: x_{name} has {len(x)} reviews and y_{name} {len(y)} labels")
  return Ranked(x_train, arrays["y_train"], x_test, arrays["y_test"], ())


def _check_readable(path: pathlib.Path) -> None:
  if path.exists() and not path.is_dir() and not path.is_file():
    raise UserError(f"{path}: not a regular file")  # a fifo would block the read below
  try:
    with open(path, "rb") as f:
      empty = not f.read(1)
  except FileNotFoundError:
    raise UserError(f"{path}: no such file") from None
  except OSError as e:
    raise UserError(f"{path}: cannot read: {e.strerror or e}") from None
  if empty:
    raise UserError(f"{path}: empty file")


# --- the cache of ranks ------------------------------------------------------------------


def _cache_path(cache_dir: pathlib.Path, source: object) -> pathlib.Path:
  key = json.dumps({"source": source, "tokenizer": TOKENIZER_VERSION}, sort_keys=True)
  return cache_dir / f"aclImdb-ranks-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"


def _save_ranked(path: pathlib.Path, ranked: Ranked) -> None:
  """Writes the ranks as flat arrays with lengths, atomically (temp file + os.replace)."""
  arrays = {"words": np.frombuffer("\n".join(ranked.words).encode(), np.uint8)}
  for name, x, y in (("train", ranked.x_train, ranked.y_train),
                     ("test", ranked.x_test, ranked.y_test)):
    arrays[f"{name}_ranks"] = np.concatenate(x).astype(np.int32)
    arrays[f"{name}_lengths"] = np.array([len(r) for r in x], np.int32)
    arrays[f"{name}_labels"] = np.asarray(y, np.int8)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
  try:
    os.fchmod(fd, files.umask_mode())  # mkstemp's 0600 would keep a shared cache private
    with os.fdopen(fd, "wb") as f:
      np.savez(f, **arrays)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)


def _load_ranked(path: pathlib.Path) -> Ranked:
  with np.load(path, allow_pickle=False) as f:
    def split(name):
      ranks = np.split(f[f"{name}_ranks"], np.cumsum(f[f"{name}_lengths"])[:-1])
      return ranks, f[f"{name}_labels"]
    words = bytes(f["words"]).decode()
    return Ranked(*split("train"), *split("test"), tuple(words.split("\n")) if words else ())


def _ranked_archive(path: pathlib.Path, source: object, cache_dir: pathlib.Path) -> Ranked:
  """`rank_archive(path)`, from the cache when it holds this source's ranks."""
  cached = _cache_path(cache_dir, source)
  if cached.is_file():
    try:
      return _load_ranked(cached)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
      logging.warning("ignoring unreadable cache %s (%s)", cached, e)
  # Shown at any verbosity: tokenizing 50,000 reviews is the slow part of a first run.
  print(f"tokenizing the reviews of {path} (once; cached in {cached})", flush=True)
  ranked = rank_archive(path)
  try:
    cache_dir.mkdir(parents=True, exist_ok=True)
    _save_ranked(cached, ranked)
  except OSError as e:
    logging.warning("could not cache the tokenized reviews in %s (%s)", cached, e)
  return ranked


# --- entry points ------------------------------------------------------------------------


def load_ranked(data_path: Optional[PathLike] = None, *,
                cache_dir: Optional[PathLike] = None) -> Ranked:
  """Word ranks from `data_path` (*.npz: Keras's file; else an aclImdb tar), or from the
  canonical archive, downloaded and checksum-verified into the cache."""
  cache_dir = pathlib.Path(cache_dir) if cache_dir is not None else download.default_cache_dir()
  if data_path is None:
    path = download.fetch(ACLIMDB_URL, ACLIMDB_SHA256, cache_dir=cache_dir)
    return _ranked_archive(path, ACLIMDB_SHA256, cache_dir)
  path = pathlib.Path(data_path)
  if path.suffix == ".npz":
    return read_keras_npz(path)
  _check_readable(path)
  stat = path.stat()
  source = [str(path.resolve()), stat.st_size, stat.st_mtime_ns]
  return _ranked_archive(path, source, cache_dir)


def load(data_path: Optional[PathLike] = None, *, num_words: Optional[int] = 10000,
         maxlen: Optional[int] = 500, seed: int = 113, start_char: Optional[int] = 1,
         oov_char: Optional[int] = 2, index_from: int = 3, padding: str = "pre",
         truncating: str = "pre", cache_dir: Optional[PathLike] = None,
         reverse: bool = False) -> Imdb:
  """Keras's `imdb.load_data(num_words)` followed by `pad_sequences(maxlen)`; with
  `reverse`, each review reversed first, as the reversed-sequence LSTM of Chollet's Deep
  Learning with Python (1st ed., §6.3) reads them (`[x[::-1] for x in x_train]`, then
  padded and truncated)."""
  ranked = load_ranked(data_path, cache_dir=cache_dir)
  (x_train, y_train), (x_test, y_test) = index_like_keras(
      ranked.x_train, ranked.y_train, ranked.x_test, ranked.y_test, num_words=num_words,
      seed=seed, start_char=start_char, oov_char=oov_char, index_from=index_from)
  if reverse:
    x_train, x_test = ([seq[::-1] for seq in x] for x in (x_train, x_test))
  pad = lambda x: pad_sequences(x, maxlen, padding=padding, truncating=truncating)
  return Imdb(pad(x_train), y_train.astype(np.float32), pad(x_test),
              y_test.astype(np.float32), ranked.words)


def decode(ids: Sequence[int], words: Sequence[str], *, start_char: int = 1,
           oov_char: int = 2, index_from: int = 3) -> str:
  """A review's ids back as text: "[START]", "[OOV]", padding left out."""
  special = {start_char: "[START]", oov_char: "[OOV]"}
  return " ".join(special.get(i) or words[i - index_from - 1] for i in map(int, ids)
                  if i != 0)


def preprocessing(data: Imdb, *, num_words: Optional[int], maxlen: Optional[int],
                  start_char: Optional[int] = 1, oov_char: Optional[int] = 2,
                  index_from: int = 3, padding: str = "pre", truncating: str = "pre",
                  reverse: bool = False) -> dict:
  """What turns a review's text into the model's ids as `load` encoded them (for
  preprocessing.json; `encode` applies it). `vocabulary` is every training word in rank
  order (empty for an `imdb.npz` source, which has no text); `reverse` as `load`'s."""
  return {"kind": "imdb", "tokenizer": TOKENIZER_VERSION, "num_words": num_words,
          "maxlen": maxlen, "start_char": start_char, "oov_char": oov_char,
          "index_from": index_from, "padding": padding, "truncating": truncating,
          "reverse": bool(reverse), "vocabulary_size": len(data.words),
          "vocabulary": list(data.words)}


def encode(texts: Sequence[str], words: Sequence[str], *, num_words: Optional[int],
           maxlen: Optional[int], start_char: Optional[int] = 1, oov_char: Optional[int] = 2,
           index_from: int = 3, padding: str = "pre", truncating: str = "pre",
           reverse: bool = False, **unused) -> np.ndarray:
  """Review texts -> <int32>[len(texts), maxlen] ids, exactly as `load` encodes a test review:
  `tokenize`, words never seen in training dropped, rank r -> id r + index_from
  (`oov_char` from `num_words` on), `start_char` first, the whole reversed with
  `reverse` (the reversed-review LSTM's), then `pad_sequences`."""
  del unused
  rank_of = {word: rank for rank, word in enumerate(words, start=1)}
  if not num_words:
    num_words = len(words) + index_from + 1  # every rank's id is below it
  prefix = [] if start_char is None else [start_char]
  encoded = []
  for text in texts:
    ids = [rank_of[w] + index_from for w in tokenize(text) if w in rank_of]
    if oov_char is not None:
      ids = [i if i < num_words else oov_char for i in ids]
    else:
      ids = [i for i in ids if i < num_words]
    encoded.append((prefix + ids)[::-1] if reverse else prefix + ids)
  return pad_sequences(encoded, maxlen, padding=padding, truncating=truncating)


def batches(data: Imdb, *, batch_size: int = 128, validation_split: float = 0.2,
            **kwargs) -> ArrayBatches:
  """Keras's `fit(x_train, y_train, validation_split=...)` and `evaluate(x_test, y_test)`."""
  return ArrayBatches.from_arrays(data.x_train, data.y_train, validation_split=validation_split,
                                  x_test=data.x_test, y_test=data.y_test,
                                  batch_size=batch_size, **kwargs)
