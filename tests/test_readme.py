"""The README as a user meets it: its Python blocks run as written (each makes up its own
data), its set-up block is two commands, and its main-job table is the committed result."""
import re

import pytest
from helpers.docs import ROOT, python_blocks

README = (ROOT / "README.md").read_text()
BLOCKS = python_blocks(README)


def test_short_with_a_quick_start_up_front():
    lines = README.splitlines()
    assert len(lines) <= 200
    assert "```python" in lines[:60] and "## Quick start" in lines[:60]
    first = re.search(r"^```(\w*)\n(.*?)^```", README, re.S | re.M)
    assert first.group(1) == "bash" and len(first.group(2).strip().splitlines()) == 2


@pytest.mark.parametrize("block", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_python_block_runs(block):
    exec(compile(block, "README.md", "exec"), {"__name__": "readme"})


def test_main_job_table_is_the_committed_result():
    """Every row of the README's main-job table appears, number for number, in the text
    table that the main job wrote (docs/results/fashion_mnist_6_epochs.txt)."""
    result = {}
    for line in (ROOT / "docs/results/fashion_mnist_6_epochs.txt").read_text().splitlines()[2:]:
        cols = line.split()
        # method, test acc %, test err %, train loss, epochs, wall-clock s, samples/s, time saved %
        result[cols[0]] = [float(cols[i]) for i in (1, 3, 5, 7)]
    section = README.split("**Main job**", 1)[1].split("\n\n![", 1)[0]
    rows = [r.strip("|").split("|") for r in section.splitlines() if r.startswith("| ")][1:]
    assert {r[0].strip() for r in rows} == set(result)
    for r in rows:
        assert [float(x) for x in r[1:]] == result[r[0].strip()], r[0]
