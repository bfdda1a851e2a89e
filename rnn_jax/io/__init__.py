"""A model's life outside training: written, read, checkpointed, exported, loaded.

  serialize    a model's architecture as data (model.json) and back
  checkpoints  parameters and optimizer state on disk (orbax), committed atomically
  run_files    what a run writes for `load`: model.json, preprocessing.json, a manifest
  predictor    `load(run_dir)`: a finished run as a `Predictor` of raw inputs
  export       a model as a `jax.export` artifact that runs without rnn_jax
  files        atomic writes and one-line errors for the files above

Each module is imported on its own (`from rnn_jax.io import predictor`), so that reading a
model.json does not import orbax.
"""
