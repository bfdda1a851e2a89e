"""One module per framework; each has `train_step(task, x, y) -> step` (a function that runs
one synchronous training step and returns the loss) or raises `Unsupported`."""


class Unsupported(Exception):
  """The framework lacks something the task needs (the message says what)."""
