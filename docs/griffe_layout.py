"""A griffe extension for this site's API reference (mkdocs.yml: mkdocstrings' `extensions`).

rnn_jax's docstrings lay out lists and examples as indented blocks of plain text:

  options    the shared absl flags and `TrainOptions`
  runtime    set-up before JAX computes

Markdown would run such a block into one paragraph. This shows every indented block
that is not part of a Google-style section (Args:, Returns:, ...) as it is written, in a
preformatted block.
"""
import re
import textwrap

import griffe

_SECTION = re.compile(r"^(Args|Arguments|Parameters|Returns|Yields|Raises|Attributes|"
                      r"Examples?|Notes?|Warns|Warnings?|Methods|Functions|Classes|"
                      r"Modules|Other Parameters|Receives)\s*:\s*$")


def preformat_indented_blocks(text: str) -> str:
  """`text` with each indented paragraph outside a section fenced as-is."""
  paragraphs = re.split(r"\n[ \t]*\n", text)
  out = []
  previous_is_section = False
  for paragraph in paragraphs:
    lines = paragraph.split("\n")
    nonblank = [line for line in lines if line.strip()]
    is_section = bool(nonblank) and bool(_SECTION.match(nonblank[0]))
    indented = bool(nonblank) and all(line.startswith("  ") for line in nonblank)
    if indented and not previous_is_section and "```" not in paragraph:
      out.append("```text\n" + textwrap.dedent(paragraph) + "\n```")
    else:
      out.append(paragraph)
    # A section's body may go on after a blank line while it stays indented.
    previous_is_section = is_section or (previous_is_section and indented)
  return "\n\n".join(out)


def _indent(line: str) -> int:
  return len(line) - len(line.lstrip(" "))


def relative_text(docstring) -> str:
  """The docstring's text indented relative to its opening quotes' line.

  griffe's text is `inspect.cleandoc`'s, which removes the indentation common to every
  line after the first: in a docstring whose body is all an indented list, that
  indentation is lost. The source says how far each line sits from the quotes.
  """
  value = docstring.value
  try:
    source = docstring.source.split("\n")
  except Exception:  # pylint: disable=broad-except  (no source: keep griffe's text)
    return value
  lines = value.split("\n")
  if len(source) == len(lines) + 1 and source[-1].strip() in ('"""', "'''"):
    source = source[:-1]  # the closing quotes on a line of their own
  if len(source) != len(lines) or len(lines) < 2:
    return value
  base = _indent(source[0])
  body = [_indent(line) for line in source[1:] if line.strip()]
  if not body:
    return value
  lost = min(body) - base
  if lost <= 0:
    return value
  return "\n".join([lines[0]] + [" " * lost + line if line.strip() else line
                                 for line in lines[1:]])


class IndentedBlocks(griffe.Extension):
  """Applies `preformat_indented_blocks` to every docstring griffe loads."""

  def on_instance(self, *, node, obj, agent, **kwargs):  # pylint: disable=unused-argument
    if obj.docstring is not None:
      obj.docstring.value = preformat_indented_blocks(relative_text(obj.docstring))
