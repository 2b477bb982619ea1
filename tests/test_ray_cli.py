"""The Ray scan's command line without a Ray cluster: its usage errors, the message when Ray is not installed, the
light scan never importing it, the Parquet schema following the record, and a Parquet output as the plan of a
local sort (journal, undo, only unchanged files under the roots). tests/test_ray.py runs real Ray jobs."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from fixtures import REPO_ROOT, make_photo, needs_model, require_modules, save_jpeg

from ensemble import cli


def scan(args, capsys) -> tuple[int, str, str]:
    """Run ``blur-detect scan ARGS`` in this process: (exit status, stdout, stderr)."""
    try:
        code = cli.main(["scan", *map(str, args)])
    except SystemExit as stop:  # argparse's usage errors
        code = stop.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture()
def one(tmp_path):
    return save_jpeg(tmp_path / "one.jpg", make_photo(1, (120, 160)))


# --------------------------------------------------------------------------------------------------------------
# Usage


@pytest.mark.parametrize("args, says", [
    (["--engine", "ray"], "--output"),
    (["--engine", "ray", "--output", "{tmp}/o.parquet", "--save-maps", "{tmp}/maps"], "--save-maps"),
    (["--engine", "ray", "--output", "{tmp}/o.parquet", "--move-blurry", "{tmp}/b"], "--plan"),
    (["--engine", "ray", "--output", "{tmp}/o.parquet", "--workers", "2"], "--workers"),
    (["--engine", "ray", "--output", "{tmp}/o.parquet", "--format", "csv"], "--format"),
    (["--engine", "ray", "--output", "{tmp}/one.jpg"], "not a folder"),
    (["--actors", "2"], "--engine ray"),
    (["--address", "auto"], "--engine ray"),
    (["--batch-size", "0"], "--batch-size"),
    (["--plan", "{tmp}/one.jpg"], "--move-blurry"),
    (["--plan", "{tmp}/one.jpg", "--move-blurry", "{tmp}/b", "--output", "{tmp}/x.json"], "--output"),
    (["--plan", "{tmp}/missing.parquet", "--move-blurry", "{tmp}/b"], "no such file"),
])
def test_options_that_do_not_go_together_are_one_usage_line(args, says, one, tmp_path, capsys):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    code, out, err = scan([one, *args], capsys)
    assert code == 2, err
    assert says in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if "error:" in line]) == 1, err


def test_engine_ray_without_ray_names_the_extra(one, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if it were not installed
    code, out, err = scan([one, "--engine", "ray", "--output", tmp_path / "o.parquet"], capsys)
    assert code == 2
    assert err.strip().splitlines() == ['error: --engine ray needs Ray: pip install "blur-ensemble[ray]"']
    assert not (tmp_path / "o.parquet").exists()


@needs_model
def test_a_local_scan_imports_neither_ray_nor_pyarrow(one):
    code = ("import sys; from ensemble.cli import main; rc = main(['scan', '-q', sys.argv[1]]); "
            "print('HEAVY', sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'pyarrow', 'pandas')), rc)")
    proc = subprocess.run([sys.executable, "-c", code, str(one)], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))
    assert "HEAVY [] 0" in proc.stdout, proc.stdout + proc.stderr


# --------------------------------------------------------------------------------------------------------------
# The schema


def test_the_parquet_schema_follows_the_record_fields(monkeypatch):
    """A field added to the record reaches the Parquet columns with no second list: a measure by default, text
    or a whole number where ensemble.records says so."""
    require_modules("pyarrow", extra="ray")
    import pyarrow as pa

    from ensemble import records
    from ensemble.distributed.output import record_schema

    assert record_schema().names == list(records.RECORD_FIELDS) + ["size", "mtime"]
    fields = records.RECORD_FIELDS + ("new_measure", "new_note")
    monkeypatch.setattr(records, "RECORD_FIELDS", fields)
    monkeypatch.setattr(records, "TEXT_FIELDS", records.TEXT_FIELDS | {"new_note"})
    schema = record_schema()
    assert schema.names == list(fields) + ["size", "mtime"]
    assert schema.field("new_measure").type == pa.float64() and schema.field("new_note").type == pa.string()
    assert schema.field("width").type == pa.int64() and schema.field("label").type == pa.string()
    assert schema.field("blur_probability").type == pa.float64()
    assert schema.field("mtime").type == pa.timestamp("ns", tz="UTC")
    assert records.error_record("x", "why")["new_measure"] is None


# --------------------------------------------------------------------------------------------------------------
# A Parquet output as the plan of a local sort


def write_plan(out, *runs: list[dict]) -> None:
    """Write each list of rows (records with size and mtime) into the Ray output folder ``out`` as one run of the
    job's own writer would (a writer never writes a path twice; two runs at once could)."""
    from ensemble.distributed.output import Output, meta, record_schema, to_table

    schema = record_schema()
    output = Output(str(out))
    output.prepare(meta(schema.names, "test-model", 0.5))
    for rows in runs:
        writer = output.writer(schema)
        writer.add(to_table(rows, schema))
        writer.flush()


def row(path, label, prob=None) -> dict:
    st = os.stat(path)
    return {"path": str(path), "label": label, "blur_probability": prob, "laplacian_var": 1.0, "width": 160,
            "height": 120, "error": "unreadable" if label == "error" else None, "size": st.st_size,
            "mtime": st.st_mtime_ns}


@pytest.fixture()
def sorted_folder(tmp_path):
    """photos/ with blurry, sharp, flat, error, changed and repeated files, one in a sub-folder, one outside; and
    the plan of them in plan.parquet."""
    require_modules("pyarrow", extra="ray")
    photos, elsewhere = tmp_path / "photos", tmp_path / "elsewhere"
    (photos / "sub").mkdir(parents=True)
    elsewhere.mkdir()
    files = {}
    for name in ("a.jpg", "b.jpg", "flat.jpg", "bad.jpg", "changed.jpg", "twice.jpg", "sub/deep.jpg"):
        files[name] = photos / name
        files[name].write_bytes(name.encode() * 100)
    files["outside.jpg"] = elsewhere / "outside.jpg"
    files["outside.jpg"].write_bytes(b"outside" * 100)
    rows = [row(files["a.jpg"], "blurry", 0.9), row(files["b.jpg"], "sharp", 0.1), row(files["flat.jpg"], "flat"),
            row(files["bad.jpg"], "error"), row(files["changed.jpg"], "blurry", 0.8),
            row(files["twice.jpg"], "blurry", 0.7), row(files["sub/deep.jpg"], "blurry", 0.95),
            row(files["outside.jpg"], "blurry", 0.99)]
    write_plan(tmp_path / "plan.parquet", rows, [row(files["twice.jpg"], "sharp", 0.2)])
    with open(files["changed.jpg"], "ab") as f:  # edited after it was scored
        f.write(b"more")
    return tmp_path, files


@needs_model
def test_a_dry_run_plan_shows_the_moves_and_touches_nothing(sorted_folder, capsys):
    root, files = sorted_folder
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    code, out, err = scan([root / "photos", "--plan", root / "plan.parquet", "--move-blurry", root / "photos/_blurry",
                           "--dry-run"], capsys)
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before
    assert code == 1  # a blurry file changed since it was scored: said, and not moved
    would = [line for line in out.splitlines() if line.startswith("would move")]
    assert would == [f"would move {files['a.jpg']} -> {root / 'photos/_blurry/a.jpg'}"]  # not sub/ without -r
    assert "dry run: 1 file(s) would be moved" in out
    assert f"not moved: {files['changed.jpg']}: changed since it was scored" in err
    assert f"not moved: {files['twice.jpg']}: it has more than one row in the plan" in err
    assert "(threshold 50%)" in out and "lie outside the paths given" in out


@needs_model
def test_a_plan_moves_through_the_journal_and_undo_puts_everything_back(sorted_folder, capsys):
    root, files = sorted_folder
    dest = root / "photos/_blurry"
    original = {name: path.read_bytes() for name, path in files.items()}
    code, out, err = scan([root / "photos", "-r", "--plan", root / "plan.parquet", "--move-blurry", dest], capsys)
    assert code == 1, err  # changed.jpg and twice.jpg were not moved, and said so
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*.jpg")) == ["a.jpg", "sub/deep.jpg"]
    for name in ("b.jpg", "flat.jpg", "bad.jpg", "changed.jpg", "twice.jpg", "outside.jpg"):
        assert files[name].exists(), name  # sharp, flat, error, changed, repeated and outside rows stay
    assert len(list(dest.glob(".blur-detect-journal-*.jsonl"))) == 1
    assert cli.main(["undo", "-q", str(dest)]) == 0
    assert {name: path.read_bytes() for name, path in files.items()} == original


@needs_model
def test_a_plan_with_another_threshold_decides_again_from_the_probabilities(sorted_folder, capsys):
    root, files = sorted_folder
    code, out, err = scan([root / "photos", "-r", "-t", "0.92", "--plan", root / "plan.parquet", "--copy-blurry",
                           root / "copies", "--dry-run"], capsys)
    assert [line.split()[2] for line in out.splitlines() if line.startswith("would copy")] == [
        str(files["sub/deep.jpg"])]  # 0.95 only
    assert "(threshold 92%)" in out


def test_a_file_that_is_not_a_plan_is_one_line(tmp_path, capsys):
    require_modules("pyarrow", extra="ray")
    (tmp_path / "photos").mkdir()
    fake = tmp_path / "plan.parquet"
    fake.write_bytes(np.arange(100, dtype=np.uint8).tobytes())
    code, out, err = scan([tmp_path / "photos", "--plan", fake, "--move-blurry", tmp_path / "b"], capsys)
    assert code == 1
    assert err.startswith(f"error: cannot read the plan {fake}:") and len(err.strip().splitlines()) == 1
