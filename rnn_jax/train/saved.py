"""What a run saves besides its checkpoints, so that `rnn_jax.load` can rebuild it:
`model.json` (the architecture, rnn_jax.serialize) and `preprocessing.json` (how raw
inputs become the model's, written by the experiment; see rnn_jax.predictor)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import numpy as np

from rnn_jax import checkpoints, serialize

MODEL_FILE = "model.json"
PREPROCESSING_FILE = "preprocessing.json"
VOCABULARY_FILE = "vocabulary.txt"


def write_run_files(workdir: Path, model, sample_x, options, preprocessing: Optional[Mapping[str, Any]],
                    report: Callable[[str], None] = print) -> None:
  """Writes model.json (or reports why it cannot) and preprocessing.json into `workdir`."""
  sample_x = np.asarray(sample_x)
  try:
    serialize.save_model(Path(workdir) / MODEL_FILE, model, input_shape=sample_x.shape[1:],
                         input_dtype=str(sample_x.dtype), compute_dtype=options.compute_dtype,
                         extra={"num_seeds": options.num_seeds})
  except serialize.NotSerializable as e:
    report(f"note: {MODEL_FILE} in {workdir} holds no architecture, so rnn_jax.load needs "
           f"model=...: {e}")
    serialize.save_model(Path(workdir) / MODEL_FILE, None, input_shape=sample_x.shape[1:],
                         input_dtype=str(sample_x.dtype), compute_dtype=options.compute_dtype,
                         extra={"num_seeds": options.num_seeds, "not_serializable": str(e)})
  if preprocessing is not None:
    preprocessing = dict(preprocessing)
    words = preprocessing.pop("vocabulary", None)
    if words is not None:  # one word a line, rank order: the file vocabulary_file names
      checkpoints.write_atomic(Path(workdir) / VOCABULARY_FILE, "".join(w + "\n" for w in words))
      preprocessing["vocabulary_file"] = VOCABULARY_FILE
    checkpoints.write_atomic(Path(workdir) / PREPROCESSING_FILE,
                             json.dumps(preprocessing, indent=2) + "\n")
