"""The code examples of the README and the documentation, for the tests that run them."""
import pathlib
import re
from typing import List

ROOT = pathlib.Path(__file__).parents[2]
DOCS = ROOT / "docs"


def python_blocks(text: str) -> List[str]:
    """The fenced python blocks of a markdown text, in order."""
    return re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)


def docs_example(marker: str, page: str = "replay.md") -> str:
    """The one python block of ``docs/<page>`` that contains ``marker``."""
    blocks = [b for b in python_blocks((DOCS / page).read_text()) if marker in b]
    assert len(blocks) == 1, f"{len(blocks)} python blocks of docs/{page} contain {marker!r}"
    return blocks[0]
