"""MkDocs hooks for this site (mkdocs.yml: `hooks`).

Docstrings and pages write array types as `<float32>[batch, time]`. Markdown would take
`<float32>` for an inline HTML tag and drop it, so raw inline HTML is turned off: such
text is shown as written. (No page relies on inline HTML.)
"""
import markdown


class _NoInlineHtml(markdown.Extension):
  def extendMarkdown(self, md):  # pylint: disable=invalid-name
    md.inlinePatterns.deregister("html")


def on_config(config):
  config.markdown_extensions.append(_NoInlineHtml())
  return config
