"""The README's "Reusing the cells in plain JAX" example runs and does what it says."""
import pathlib
import re

import numpy as np

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
SECTION = "## Reusing the cells in plain JAX"


def _python_block(section_title):
  text = README.read_text()
  assert section_title in text, f"README.md has no section {section_title!r}"
  section = text.split(section_title, 1)[1].split("\n## ", 1)[0]
  blocks = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
  assert len(blocks) == 1
  return blocks[0]


def test_plain_jax_example_runs(capsys):
  namespace = {}
  exec(compile(_python_block(SECTION), str(README), "exec"), namespace)  # pylint: disable=exec-used
  printed = capsys.readouterr().out
  assert "{'kernel': (3, 24), 'recurrent_kernel': (8, 24), 'bias': (2, 24)}" in printed
  assert "loss " in printed
  after = namespace["loss"](namespace["params"], namespace["xs"], namespace["targets"])
  assert after < namespace["before"]  # the gradient step helped
  assert np.all(np.isfinite(np.asarray(after)))


def test_layers_example_runs(capsys):
  namespace = {}
  exec(compile(_python_block("## Layers and models"), str(README), "exec"), namespace)  # pylint: disable=exec-used
  printed = capsys.readouterr().out
  assert "(2, 1)" in printed
  assert "'kernel': (64, 192)" in printed  # GRU(64) over the Bidirectional's 2*32 features
  logits, noisy = np.asarray(namespace["logits"]), np.asarray(namespace["noisy"])
  assert np.all(np.isfinite(logits)) and not np.allclose(logits, noisy)  # dropout changed it


def test_user_cell_example_runs(capsys):
  namespace = {}
  exec(compile(_python_block("## Writing your own cell"), str(README), "exec"), namespace)  # pylint: disable=exec-used
  assert "(4, 1)" in capsys.readouterr().out
  y = np.asarray(namespace["y"])
  assert y.shape == (4, 1) and np.all(np.isfinite(y))
  params = namespace["params"]
  assert set(params[1]) == {"w", "u", "b"} and params[1]["u"].shape == (16,)
