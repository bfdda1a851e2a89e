"""Data: every source hands the training loop a `Batches`, and every run records how its
raw inputs are prepared.

  batches        `Batches`, `ArrayBatches`: what `fit` trains on
  imdb           the IMDB reviews: an archive streamed, tokenized and encoded as Keras does
  timeseries     an evenly spaced CSV read, checked and normalized
  windows        windows over a series, drawn as Chollet's generator draws them
  jena           the Jena climate file: where it comes from, how it is recognised
  adding         the adding problem's sequences
  download       a checked, cached download
  preprocessing  the registered kinds `rnn_jax.load` rebuilds a run's input pipeline from
"""
