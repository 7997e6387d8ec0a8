"""The code examples of the documentation, for the tests that run them."""
import pathlib
import re

DOCS = pathlib.Path(__file__).parents[2] / "docs"


def docs_example(marker: str, page: str = "replay.md") -> str:
    """The one python block of ``docs/<page>`` that contains ``marker``."""
    text = (DOCS / page).read_text()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if marker in b]
    assert len(blocks) == 1, f"{len(blocks)} python blocks of docs/{page} contain {marker!r}"
    return blocks[0]
