"""The docs: the MkDocs site builds with --strict, and every ```python block of README.md
and of the pages under docs/ runs.

Each block is one test, named by its file and number (`docs/guide/cells.md#2`), so a
broken example fails by name, with a traceback pointing at its line in the Markdown file.
The blocks of one page share their names and run in order, in a temporary directory of
their own, as a reader would paste them into one session. A test that lands on an xdist
worker before its page's earlier blocks runs those first. `CHECKS` adds what some blocks
must print or compute, beyond running.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import subprocess
import sys
from typing import Callable, Optional

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
# A fenced Python block, also inside a list item (indented): its opening fence's indent
# closes it.
FENCE = re.compile(r"^( *)```python[ \t]*\n(.*?)^\1```[ \t]*$", re.MULTILINE | re.DOTALL)


@dataclasses.dataclass(frozen=True)
class Block:
  page: str    # relative to the repository, e.g. "docs/guide/cells.md"
  number: int  # 1-based, in the page's order
  line: int    # of the opening fence
  code: str    # dedented; as many leading newlines as put it at its lines in the page

  @property
  def name(self) -> str:
    return f"{self.page}#{self.number}"


def python_blocks(path: pathlib.Path) -> list[Block]:
  text = path.read_text(encoding="utf-8")
  page = path.relative_to(REPO).as_posix()
  blocks = []
  for number, match in enumerate(FENCE.finditer(text), start=1):
    indent, body = match.group(1), match.group(2)
    lines = [line[len(indent):] if line.startswith(indent) else line.lstrip()
             for line in body.split("\n")]
    line = text.count("\n", 0, match.start()) + 1
    blocks.append(Block(page, number, line, "\n" * line + "\n".join(lines)))
  return blocks


BLOCKS = {path.relative_to(REPO).as_posix(): python_blocks(path) for path in PAGES}
ALL_BLOCKS = [block for blocks in BLOCKS.values() for block in blocks]


# --- what some blocks must do besides running --------------------------------------------

def _plain_jax(namespace, printed):
  assert "{'kernel': (3, 24), 'recurrent_kernel': (8, 24), 'bias': (2, 24)}" in printed
  after = namespace["loss"](namespace["params"], namespace["xs"], namespace["targets"])
  assert np.isfinite(float(after)) and after < namespace["before"]  # the step helped


def _layers(namespace, printed):
  assert "(2, 1)" in printed
  assert "'kernel': (64, 192)" in printed  # GRU(64) over the Bidirectional's 2*32 features
  logits, noisy = np.asarray(namespace["logits"]), np.asarray(namespace["noisy"])
  assert np.all(np.isfinite(logits)) and not np.allclose(logits, noisy)  # dropout acted


def _own_cell(namespace, printed):
  assert "(4, 1)" in printed
  y = np.asarray(namespace["y"])
  assert y.shape == (4, 1) and np.all(np.isfinite(y))
  params = namespace["params"]
  assert set(params[1]) == {"w", "u", "b"} and params[1]["u"].shape == (16,)


def _flax_trains(namespace, printed):
  assert namespace["loss"] < 0.5 * namespace["first"]
  assert "'recurrent_kernel': (16, 48)" in printed


def _prints_true(namespace, printed):
  del namespace
  last = printed.strip().splitlines()[-1]
  assert "True" in last and "False" not in last, printed


def _backends_agree(namespace, printed):
  del printed
  assert max(float(np.abs(np.asarray(y) - np.asarray(namespace["outputs"]["recompute"])).max())
             for y in namespace["outputs"].values()) < 1e-5


def _loaded_run_predicts(namespace, printed):
  probabilities = np.asarray(namespace["probabilities"])
  assert probabilities.shape == (2,) and np.all((probabilities > 0) & (probabilities < 1))
  assert printed.splitlines()[1].startswith("lstm {")


def _export_matches(namespace, printed):
  exported = np.asarray(namespace["exported"].call(namespace["x"]))
  np.testing.assert_allclose(exported, namespace["probabilities"], atol=1e-6)
  assert printed.strip()


# (page, a line that names the block) -> check(namespace, printed)
CHECKS: dict[tuple[str, str], Callable[[dict, str], None]] = {
    ("docs/guide/cells.md", "def last_output(params, xs):"): _plain_jax,
    ("docs/guide/cells.md", "ys, (h, c) = recurrent.unroll("): _prints_true,
    ("docs/guide/layers.md", "L.GRU(64, activation=\"relu\""): _layers,
    ("docs/guide/own-cell.md", "ind_rnn = types.SimpleNamespace("): _own_cell,
    ("docs/guide/flax.md", "class Classifier(nn.Module):"): _flax_trains,
    ("docs/guide/min-rnn.md", "outputs = {name: L.MinGRU("): _backends_agree,
    ("docs/guide/min-rnn.md", "solution = parallel.evaluate("): _prints_true,
    ("docs/guide/interop.md", "apply_fn, params = interop.from_keras("): _prints_true,
    ("docs/guide/interop.md", "apply_fn, params = interop.from_torch("): _prints_true,
    ("docs/guide/using-a-model.md", "probabilities = predictor.predict("): _loaded_run_predicts,
    ("docs/guide/using-a-model.md", "exported = jax.export.deserialize("): _export_matches,
    ("docs/architecture.md", "backends.register(Backend("): _prints_true,
}


def _check_of(block: Block) -> Optional[Callable[[dict, str], None]]:
  found = [check for (page, line), check in CHECKS.items()
           if page == block.page and line in block.code]
  assert len(found) <= 1, f"{block.name} matches several CHECKS"
  return found[0] if found else None


def test_every_check_names_one_block():
  for page, line in CHECKS:
    named = [block.name for block in BLOCKS.get(page, []) if line in block.code]
    assert len(named) == 1, f"CHECKS[{page!r}, {line!r}] names {named or 'no block'}"


def test_the_pages_have_examples():
  """The collection below found the blocks it should (a broken FENCE finds none)."""
  assert len(BLOCKS["README.md"]) >= 4
  assert len(ALL_BLOCKS) >= 20


# --- running the blocks ------------------------------------------------------------------

@dataclasses.dataclass
class _PageSession:
  namespace: dict
  cwd: pathlib.Path
  done: int = 0  # blocks run so far, in order


_SESSIONS: dict[str, _PageSession] = {}


def _run(block: Block, namespace: dict) -> None:
  exec(compile(block.code, str(REPO / block.page), "exec"), namespace)  # pylint: disable=exec-used


@pytest.mark.parametrize("block", ALL_BLOCKS, ids=[block.name for block in ALL_BLOCKS])
def test_python_block(block, tmp_path_factory, monkeypatch, capsys):
  if "import torch" in block.code:
    pytest.importorskip("torch")  # the `torch` extra, as the parity tests (./run.sh test installs it)
  session = _SESSIONS.get(block.page)
  if session is None or session.done >= block.number:  # a new session, from the first block
    directory = re.sub(r"[^A-Za-z0-9]+", "_", block.page)
    session = _PageSession({"__name__": "__main__"}, tmp_path_factory.mktemp(directory))
    _SESSIONS[block.page] = session
  monkeypatch.chdir(session.cwd)
  monkeypatch.setattr(sys, "argv", [block.page])
  for earlier in BLOCKS[block.page][session.done:block.number - 1]:
    try:
      _run(earlier, session.namespace)
    except Exception as e:  # pylint: disable=broad-except
      pytest.fail(f"{earlier.name}, which {block.name} follows, failed: {e!r}")
    session.done = earlier.number
  capsys.readouterr()
  _run(block, session.namespace)
  session.done = block.number
  check = _check_of(block)
  if check is not None:
    check(session.namespace, capsys.readouterr().out)


# --- the site ----------------------------------------------------------------------------

def test_mkdocs_build_strict(tmp_path):
  """`mkdocs build --strict`: every page in the nav, every link and anchor resolves, and
  the API reference's every `::: name` renders without a warning."""
  done = subprocess.run(
      [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
      cwd=REPO, capture_output=True, text=True, timeout=300,
      env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
  assert done.returncode == 0, done.stderr[-4000:]
  assert (tmp_path / "site" / "api" / "core" / "index.html").is_file()
  core = (tmp_path / "site" / "api" / "core" / "index.html").read_text(encoding="utf-8")
  assert 'id="rnn_jax.recurrent.unroll"' in core  # the reference rendered the docstrings
  # README.md is not part of the site, so mkdocs does not check its links into docs/:
  # each must name a page of the site, and an anchor that page has.
  readme = (REPO / "README.md").read_text(encoding="utf-8")
  for target in re.findall(r"\]\((docs/[^)\s]+)\)", readme):
    path, _, anchor = target.partition("#")
    assert (REPO / path).is_file(), f"README.md links to {target}: no such file"
    if path.endswith(".md"):
      page = pathlib.Path(path[len("docs/"):-len(".md")])
      page = page.parent if page.name == "index" else page
      html = (tmp_path / "site" / page / "index.html").read_text(encoding="utf-8")
      assert not anchor or f'id="{anchor}"' in html, f"README.md links to {target}: no anchor"
