"""The Colab notebook runs top to bottom (its code cells, in order, in a fresh interpreter)."""

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
NOTEBOOK = ROOT / "colab" / "demo.ipynb"


def test_readme_colab_link_and_notebook_repo_agree():
    nb = json.loads(NOTEBOOK.read_text())
    first = next("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    statement = ast.parse(first).body[0]  # the one variable at the top of the first cell
    assert isinstance(statement, ast.Assign) and statement.targets[0].id == "REPO"
    repo = statement.value.value
    assert re.fullmatch(r"[\w.-]+/[\w.-]+", repo), repo
    links = re.findall(
        r"https://colab\.research\.google\.com/github/([^/\s)]+/[^/\s)]+)/blob/([^/\s)]+)/"
        r"([^\s)]+)",
        (ROOT / "README.md").read_text(),
    )
    assert links, "no Open in Colab link in README.md"
    for link_repo, _branch, path in links:
        assert link_repo == repo
        assert (ROOT / path) == NOTEBOOK


@pytest.mark.notebook
def test_demo_notebook_runs():
    nb = json.loads(NOTEBOOK.read_text())
    cells = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    assert len(cells) >= 3
    source = "import matplotlib\nmatplotlib.use('Agg')\n" + "\n\n".join(cells)
    env = dict(os.environ, DEMO_SUBJECTS="20", DEMO_SIZE="192", DEMO_EPOCHS="1", MPLBACKEND="Agg")
    # Run with -c: like a Jupyter / Colab kernel, __main__ has no file.
    res = subprocess.run(
        [sys.executable, "-c", source],
        cwd=NOTEBOOK.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "| SimCLR + linear probe |" in res.stdout  # the paper-format table
    # the Bayes ceilings and the comparison table (the clinical baseline on the same subjects)
    assert "image_ceiling_auc" in res.stdout and "clinical_ceiling_auc" in res.stdout
    assert "| clinical (age, sex) |" in res.stdout and "Δ AUC vs clinical" in res.stdout
    assert "Bayes posterior: image" in res.stdout
    assert "probability_interval" in res.stdout
