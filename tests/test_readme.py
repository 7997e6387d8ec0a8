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
    """Every row of the README's main-job table appears, cell for cell, in the text table
    that the main job wrote (docs/results/fashion_mnist/table.txt): the totals, then the
    paired differences to uniform."""
    lines = (ROOT / "docs/results/fashion_mnist/table.txt").read_text().splitlines()
    cells = [re.split(r"\s{2,}", line.strip()) for line in lines]
    end = lines.index("")
    totals = {c[0]: c for c in cells[2:end]}
    start = next(i for i, line in enumerate(lines) if line.startswith("Paired differences to "
                                                                         "uniform ")) + 3
    paired = {}
    for c in cells[start:]:
        if len(c) < 2:
            break
        paired[c[0]] = c
    section = README.split("**Main job**", 1)[1].split("\n\n", 2)[1]
    rows = [[x.strip() for x in r.strip("|").split("|")] for r in section.splitlines()
            if r.startswith("| ")][1:]
    assert {r[0] for r in rows} == set(totals)
    for r in rows:
        c, p = totals[r[0]], paired.get(r[0])
        # method, test error, train loss, train time; train loss @t, test error @t, saved
        assert r[1:4] == [c[1], c[2], c[4]], r[0]
        assert r[4:] == ([p[4], p[3], p[6]] if p else ["", "", ""]), r[0]
