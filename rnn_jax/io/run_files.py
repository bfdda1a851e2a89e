"""What a run saves besides its checkpoints, so that `rnn_jax.load` can rebuild it:
`model.json` (the architecture, rnn_jax.io.serialize) and `preprocessing.json` (how raw
inputs become the model's, written by the experiment; see rnn_jax.io.predictor), with
`vocabulary.txt` for text. model.json is written last and records the size and SHA-256
of the others (`files`), so that `load` refuses a truncated or changed file by name."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import numpy as np

from rnn_jax.io import files, serialize

MODEL_FILE = "model.json"
PREPROCESSING_FILE = "preprocessing.json"
VOCABULARY_FILE = "vocabulary.txt"


def file_record(data: bytes) -> dict:
  """What model.json records of a run file: its size and SHA-256."""
  return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def write_run_files(workdir: Path, model, sample_x, options,
                    preprocessing: Optional[Mapping[str, Any]],
                    report: Callable[[str], None] = print) -> None:
  """Writes preprocessing.json (`{"kind": "arrays"}` when there is none: arrays are taken
  as they are), vocabulary.txt for text, then model.json (or a record without the
  architecture, and a note why) with their sizes and checksums."""
  sample_x = np.asarray(sample_x)
  preprocessing = dict(preprocessing if preprocessing is not None else {"kind": "arrays"})
  written = {}
  words = preprocessing.pop("vocabulary", None)
  if words is not None:  # one word a line, rank order: the file vocabulary_file names
    written[VOCABULARY_FILE] = "".join(w + "\n" for w in words).encode()
    preprocessing["vocabulary_file"] = VOCABULARY_FILE
  written[PREPROCESSING_FILE] = (json.dumps(preprocessing, indent=2) + "\n").encode()
  files.make_dirs(workdir)
  for name, data in written.items():
    files.write_atomic(Path(workdir) / name, data)
  record = dict(input_shape=sample_x.shape[1:], input_dtype=str(sample_x.dtype),
                compute_dtype=options.compute_dtype)
  extra = {"num_seeds": options.num_seeds,
           "files": {name: file_record(data) for name, data in written.items()}}
  try:
    serialize.save_model(Path(workdir) / MODEL_FILE, model, **record, extra=extra)
  except serialize.NotSerializable as e:
    report(f"note: {MODEL_FILE} in {workdir} holds no architecture, so rnn_jax.load needs "
           f"model=...: {e}")
    serialize.save_model(Path(workdir) / MODEL_FILE, None, **record,
                         extra={**extra, "not_serializable": str(e)})
