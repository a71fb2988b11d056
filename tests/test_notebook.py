"""notebooks/vislog.ipynb runs headless (nbclient) on a hand-written run directory, in this test's interpreter."""

import base64
import importlib.util
import json
import sys
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "vislog.ipynb"
KERNEL_NAME = "llmpy-test-python"


def write_run_dir(run_dir: Path) -> None:
    """A small run: main.log with a restart (step 2 re-logged) plus metrics.jsonl with throughput and the config."""
    run_dir.mkdir()
    (run_dir / "main.log").write_text(
        "s:0 tel:10.950000\n"
        "s:0 trl:10.900000 lr:0.000100 norm:4.000000\n"
        "s:1 trl:9.500000 lr:0.000200 norm:3.000000\n"
        "s:2 trl:9.100000 lr:0.000300 norm:2.500000\n"
        "s:2 trl:8.800000 lr:0.000300 norm:2.400000\n"
        "s:2 tel:8.900000\n"
        "s:2 eval:0.255000\n"
    )
    shape = {"n_layer": 12, "n_head": 12, "n_embd": 768, "block_size": 1024, "vocab_size": 50257,
             "padded_vocab_size": 50304}
    records = [{"step": 0, "kind": "config", "model_config": shape, "num_parameters": 124475904, "world_size": 1}]
    for step, loss in enumerate([10.9, 9.5, 8.8]):
        records.append({"step": step, "kind": "train", "loss": loss, "lr": 1e-4 * (step + 1), "tokens": 4096,
                        "tokens_per_sec": 20000.0, "mfu": 0.3, "step_ms": 204.8})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))


def kernel_manager(tmp_path: Path):
    """A kernel spec in a private directory that starts *this* interpreter, so the notebook sees this venv's llmpy.

    The stock `python3` spec works here too (jupyter_client swaps a bare `python` argv for sys.executable), but a
    user-level spec of the same name elsewhere on JUPYTER_PATH could start another Python without llmpy.
    """
    if importlib.util.find_spec("ipykernel") is None:
        pytest.fail(f"ipykernel is not installed for {sys.executable}: pip install ipykernel (the notebook test "
                    "needs a Jupyter kernel)")
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    spec_dir = tmp_path / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "llmpy test", "language": "python"}))
    specs = KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")])
    return KernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=specs)


def test_vislog_notebook_runs_headless(tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    run_dir = tmp_path / "my_run"
    write_run_dir(run_dir)
    monkeypatch.setenv("LLMPY_RUN_DIR", str(run_dir))  # the kernel inherits this process's environment
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(notebook, km=kernel_manager(tmp_path), timeout=300, startup_timeout=300,
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()

    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    text = "".join(output.get("text", "") for output in outputs if output.output_type == "stream")
    assert "run my_run" in text
    assert "8.8000 (step 2)" in text  # min train loss: the re-logged step 2 wins
    assert "8.9000 (step 2)" in text  # min val loss
    assert "GPT-2 124M val loss (3.425)" in text
    pngs = [output.data["image/png"] for output in outputs if "image/png" in output.get("data", {})]
    assert len(pngs) == 1 and base64.b64decode(pngs[0])[:4] == b"\x89PNG"
