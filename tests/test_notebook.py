"""notebooks/pipeline.ipynb: committed without outputs, and run end to end in tiny mode on the CPU, as a user runs it.

The run executes every cell with nbclient in a kernel of this very Python (so this venv's packages), with TINY = True
and WORK = a temporary folder injected after the parameters cell, papermill style. It then checks what each stage
wrote into WORK, what the notebook showed, and that nothing in the repository changed: the committed model/ and
final_model/ are the shipped model, and a run that writes there is a bug.
"""
import hashlib
import json
import subprocess
import sys
import zipfile

import pytest

from fixtures import REPO_ROOT, require_modules

NOTEBOOK = REPO_ROOT / "notebooks/pipeline.ipynb"
TABLE_HEADER = "| metric | Laplacian threshold | CNN alone | Ensemble |"
COLAB_BADGE = ("https://colab.research.google.com/github/blur-ensemble/blur-ensemble/blob/main/"
               "notebooks/pipeline.ipynb")


def read_notebook():
    nbformat = pytest.importorskip("nbformat")
    return nbformat.read(NOTEBOOK, as_version=4)


def parameters_index(nb) -> int:
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"one cell must be tagged 'parameters', found {len(tagged)}"
    return tagged[0]


def test_committed_notebook_is_stripped():
    nb = read_notebook()
    import nbformat

    nbformat.validate(nb)
    dirty = [i for i, c in enumerate(nb.cells)
             if c.cell_type == "code" and (c.get("outputs") or c.get("execution_count") is not None)]
    assert not dirty, (f"cells {dirty} of {NOTEBOOK.name} carry outputs or execution counts: outputs are stripped in "
                       "git (Jupyter: Edit → Clear Outputs of All Cells, then save)")
    first = nb.cells[0]
    assert first.cell_type == "markdown" and COLAB_BADGE in first.source.splitlines()[0]
    params = nb.cells[parameters_index(nb)].source
    for name in ("DATA", "LAYOUT", "USE_DRIVE", "UPLOAD", "WORK", "EPOCHS", "SCAN", "TINY"):
        assert f"\n{name} = " in f"\n{params}", f"parameter {name} missing from the parameters cell"
    assert "\nTINY = False" in f"\n{params}", "the committed notebook trains the real model, not the tiny one"


# --------------------------------------------------------------------------------------------------------------
# Running it


def tree_hashes(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


SETTLED = (".venv/", ".pytest_cache/", "blur_ensemble.egg-info/")


def repo_status() -> set[str]:
    """``git status`` of the repository, one line per file, ignored files included (data/*.pkl and reports/ are
    gitignored). Left out: the bytecode caches any import writes, the venv, and edits to tracked files and new
    .py/.md/.toml files outside model/, final_model/, data/ and notebooks/, which people may be making while this
    runs (the notebook writes none of those; the committed model is compared byte for byte)."""
    proc = subprocess.run(["git", "status", "--porcelain", "--ignored", "--untracked-files=all"], cwd=REPO_ROOT,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"not a git checkout ({proc.stderr.strip()})")
    kept = set()
    for line in proc.stdout.splitlines():
        code, path = line[:2], line[3:]
        if "__pycache__/" in path or path.startswith(SETTLED):
            continue
        if not path.startswith(("model/", "final_model/", "data/", "notebooks/")) and (
                code not in ("??", "!!") or path.endswith((".py", ".md", ".toml"))):
            continue
        kept.add(line)
    return kept


def execute(tmp_path, monkeypatch, **params):
    """Run the notebook with ``params`` injected after its parameters cell; return (notebook, error or None)."""
    require_modules("nbclient", "nbformat", "ipykernel", extra="test")
    import nbclient
    import nbformat

    nb = read_notebook()
    injected = "\n".join(f"{k} = {v!r}" for k, v in params.items())
    nb.cells.insert(parameters_index(nb) + 1, nbformat.v4.new_code_cell(
        f"# Parameters injected by tests/test_notebook.py\n{injected}\n"
        "import sys as _sys\nprint('kernel prefix:', _sys.prefix)"))
    # The kernel "python3" is this Python: a kernel spec of our own comes first on JUPYTER_PATH, so neither a user's
    # python3 kernel nor another environment's can be picked up. Jupyter's and IPython's files stay in tmp_path.
    spec = tmp_path / "jupyter/kernels/python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (test)", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "jupyter-runtime"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "mpl"))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # the CPU, as on a machine without a GPU
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=600,
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as err:
        return nb, err
    return nb, None


def outputs_of(nb, kind=None):
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if kind is None or o["output_type"] == kind]


def output_text(nb) -> str:
    parts = []
    for o in outputs_of(nb):
        if o["output_type"] == "stream":
            parts.append(o["text"])
        elif "data" in o:
            parts += [o["data"].get("text/markdown", ""), o["data"].get("text/plain", "")]
    return "\n".join(parts)


def test_tiny_run(tmp_path, monkeypatch):
    """The whole notebook in tiny mode: every stage's outputs in WORK, the table and the plots shown inline, the
    repository untouched."""
    pytest.importorskip("tensorflow")
    pytest.importorskip("skimage")
    shipped = {d: tree_hashes(REPO_ROOT / d) for d in ("model", "final_model")}
    status = repo_status()
    work = tmp_path / "work"

    nb, error = execute(tmp_path, monkeypatch, TINY=True, WORK=str(work))
    assert error is None, f"the notebook failed:\n{str(error)[-3000:]}"

    text = output_text(nb)
    assert f"kernel prefix: {sys.prefix}" in text  # the kernel ran this venv's Python
    assert "sees no GPU: training will run on the CPU" in text
    assert "nothing to install" in text  # the project is importable here, so the install cell did nothing
    for f in ("tiny/labels.csv", "data/train.pkl", "data/test.pkl", "model/cnn.onnx", "model/training_curves.png",
              "final_model/meta.onnx", "final_model/metadata.json", "final_model/kind.onnx",
              "reports/test_report.json", "reports/roc_all.png", "reports/confusion_all.png",
              "reports/reliability_all.png", "scan.txt", "blur-model.zip"):
        assert (work / f).is_file(), f"{f} missing from WORK"
    assert len((work / "tiny/labels.csv").read_text().splitlines()) == 41  # header + 20 scenes, sharp and blurred

    report = json.loads((work / "reports/test_report.json").read_text())
    n_test = report["sets"]["all"]["ensemble"]["n"]
    assert 0 < n_test < 40 and report["model"] == str(work)
    meta = json.loads((work / "final_model/metadata.json").read_text())
    assert meta["data"]["images"] + n_test == 40 and meta["meta"]["folds"] == 2
    assert meta["test_metrics"]["n"] == n_test  # test.py recorded its figures in the new model, not the shipped one

    # What the data scientist sees: the results table rendered, the curves and the three plots inline, the scan.
    tables = [o for o in outputs_of(nb, "display_data") if TABLE_HEADER in o["data"].get("text/markdown", "")]
    assert len(tables) == 1
    assert len([o for o in outputs_of(nb, "display_data") if "image/png" in o["data"]]) >= 4
    summary = (work / "scan.txt").read_text().splitlines()[-1]  # "40 images: 16 blurry, 24 sharp, 0 errors ..."
    assert summary.startswith("40 images: ") and " blurry, " in summary and summary in text
    with zipfile.ZipFile(work / "blur-model.zip") as z:
        names = set(z.namelist())
    assert {"blur-model/model/cnn.onnx", "blur-model/final_model/meta.onnx",
            "blur-model/final_model/metadata.json"} <= names

    # The shipped model and the repository are as they were.
    assert {d: tree_hashes(REPO_ROOT / d) for d in shipped} == shipped, "the run changed the committed model"
    assert repo_status() == status, f"the run changed the repository: {sorted(repo_status() ^ status)}"


def test_bad_data_path_is_one_line(tmp_path, monkeypatch):
    """A DATA folder that does not exist stops the notebook at the data cell with one line, not a traceback."""
    missing = tmp_path / "no-such-photos"
    nb, error = execute(tmp_path, monkeypatch, DATA=str(missing), WORK=str(tmp_path / "work"))
    assert error is not None and error.ename == "Stop"
    (shown,) = outputs_of(nb, "error")
    assert shown["traceback"] == [f"error: DATA not found: {missing}"]
    assert not (tmp_path / "work/data").exists()  # no stage ran
