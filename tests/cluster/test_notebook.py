"""The data scientists' notebook runs top to bottom against the test cluster, on small data:
feedback → features → train → evaluate with plots → deploy → a campaign ranked by the new
version → rollback."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.slow

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "train_and_deploy.ipynb"


def test_notebook_runs_top_to_bottom(stack, tmp_path, monkeypatch):
    env = {
        "HERALD_API_URL": stack.api_url,
        "HERALD_API_KEY": "test-admin",
        "HERALD_MODEL_DIR": str(stack.settings.models_root),
        "HERALD_FEEDBACK_DIR": str(stack.settings.feedback_root),
        "HERALD_NOTEBOOK_USERS": "20000",
        "HERALD_NOTEBOOK_OUT": str(tmp_path),
        "PYTHONPATH": str(NOTEBOOK.parents[1]),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parents[1])}},
    )
    client.execute()
    assert (tmp_path / "lift.png").stat().st_size > 1000
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "lift vs random (clicks)" in text and "'state': 'done'" in text
