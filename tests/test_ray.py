"""Ray scans on a local Ray instance (2 CPUs, no dashboard) started once for this module: the Parquet records
equal a plain scan's, a corrupt file is an error row, remote files read as bytes score the same, an actor killed
mid-job still gives every file exactly once, and a rerun after an interrupted job scores only the missing files."""
from __future__ import annotations

import logging
import os
import shutil

import pytest

from fixtures import blur, make_photo, needs_model, require_modules, save_jpeg

from ensemble import cli
from ensemble.records import RECORD_FIELDS

pytestmark = needs_model

N_PHOTOS = 8


@pytest.fixture(scope="module")
def ray_local():
    require_modules("ray", "ray.data", "pyarrow", extra="ray")
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """A folder of small JPEGs (every other one blurred), a corrupt one, an empty one and a text file."""
    folder = tmp_path_factory.mktemp("ray-photos")
    for i in range(N_PHOTOS):
        img = make_photo(300 + i, (120, 160))
        save_jpeg(folder / f"photo{i}.jpg", blur(img, "gaussian", 3.0) if i % 2 else img)
    good = (folder / "photo0.jpg").read_bytes()
    (folder / "corrupt.jpg").write_bytes(good[: len(good) // 3])  # cut off mid-scan
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.fixture(scope="module")
def plain(photos):
    """The local scan's records, by absolute path."""
    from ensemble.detector import BlurDetector
    from ensemble.scan import expand_paths, scan_paths

    inputs, _ = expand_paths([photos])
    detector = BlurDetector.load(threads=1)
    out = {}
    for s in scan_paths(inputs, detector, workers=2):
        out[os.path.abspath(s.path)] = (s.result.record(s.path) if s.error is None
                                        else cli.error_record(s.path, s.error))
    assert len(out) == N_PHOTOS + 2
    return out


def read(output) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(str(output)).to_pylist()


def by_path(rows: list[dict]) -> dict:
    paths = [r["path"] for r in rows]
    assert len(paths) == len(set(paths)), "a file appears twice"
    return {r["path"]: r for r in rows}


def assert_same_records(rows: dict, plain: dict, key=lambda path: path) -> None:
    assert {key(p) for p in rows} == set(plain)
    for path, r in rows.items():
        p = plain[key(path)]
        for name in RECORD_FIELDS[1:]:  # every field the record has, whatever it grows
            if isinstance(p[name], float):
                assert r[name] == pytest.approx(p[name], rel=1e-6, abs=1e-5), (path, name)
            else:
                assert r[name] == p[name], (path, name)


@pytest.fixture(scope="module")
def ray_output(ray_local, photos, tmp_path_factory):
    from ensemble.distributed.job import run_scan

    out = tmp_path_factory.mktemp("ray-out") / "scores.parquet"
    result = run_scan([photos], str(out))
    return out, result


def test_the_parquet_records_equal_a_plain_scan(ray_output, plain):
    out, result = ray_output
    import pyarrow.parquet as pq

    table = pq.read_table(str(out))
    assert table.schema.names == list(RECORD_FIELDS) + ["size", "mtime"]
    rows = by_path(table.to_pylist())
    assert_same_records(rows, plain)
    for path, r in rows.items():
        st = os.stat(path)
        assert r["size"] == st.st_size
    mtimes = table.column("mtime").cast("int64").to_pylist()  # to the nanosecond
    assert sorted(mtimes) == sorted(os.stat(p).st_mtime_ns for p in rows)
    assert result.scored == N_PHOTOS + 2 and result.skipped == 0 and result.parts == 1
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith("part-")) == ["_blur-detect.json"]


def test_a_corrupt_file_is_an_error_row_and_the_job_goes_on(ray_output, photos):
    out, result = ray_output
    rows = by_path(read(out))
    corrupt, empty = rows[str(photos / "corrupt.jpg")], rows[str(photos / "empty.jpg")]
    assert corrupt["label"] == "error" and corrupt["error"].startswith("corrupt or truncated image")
    assert empty["label"] == "error" and empty["error"] == "empty file (0 bytes)"
    assert corrupt["blur_probability"] is None and corrupt["width"] is None
    assert result.counts["error"] == 2 and result.counts.get("blurry", 0) + result.counts.get("sharp", 0) == N_PHOTOS


def test_remote_files_read_as_bytes_score_the_same(ray_local, photos, plain):
    """A Dataset of URIs (file:// here, s3:// on a cluster): read through pyarrow, decoded by the same decoder."""
    from ensemble.distributed import scan_dataset

    uris = [{"path": "file://" + path} for path in sorted(plain)]
    rows = by_path(scan_dataset(ray_local.data.from_items(uris), actors=2, batch_size=4).take_all())
    assert_same_records(rows, plain, key=lambda uri: uri[len("file://"):])
    assert all(r["size"] == os.stat(p[len("file://"):]).st_size for p, r in rows.items())


def test_killing_an_actor_mid_job_still_gives_every_file_exactly_once(ray_local, photos, tmp_path):
    from ensemble.distributed.job import run_scan

    marker = tmp_path / "an-actor-died"
    out = tmp_path / "scores.parquet"
    # The first actor to finish 3 rows exits halfway through its second batch of 2, as a killed worker would.
    result = run_scan([photos], str(out), actors=2, batch_size=2, exit_after=(3, str(marker)))
    assert marker.exists(), "no actor died: the test proved nothing"
    rows = by_path(read(out))
    assert sorted(rows) == sorted(str(p) for p in photos.glob("*.jpg"))
    assert result.scored == N_PHOTOS + 2


def test_a_rerun_after_an_interrupted_job_scores_only_the_missing_files(ray_local, photos, plain, tmp_path):
    from ensemble.distributed.job import JobInterrupted, run_scan

    out = tmp_path / "scores.parquet"

    def stop(rows, writer):
        if writer.parts:  # Ctrl-C once the first part file is written
            raise KeyboardInterrupt

    with pytest.raises(JobInterrupted) as stopped:
        run_scan([photos], str(out), actors=2, batch_size=2, rows_per_part=2, on_rows=stop)
    first = read(out)
    assert 0 < len(first) < N_PHOTOS + 2 and stopped.value.result.scored == len(first)
    parts = {p.name: p.read_bytes() for p in out.glob("part-*.parquet")}

    result = run_scan([photos], str(out), actors=2, batch_size=2)
    assert result.skipped == len(first)
    assert result.scored == N_PHOTOS + 2 - len(first)
    assert {p.name: p.read_bytes() for p in out.glob("part-*.parquet") if p.name in parts} == parts  # untouched
    assert_same_records(by_path(read(out)), plain)


def test_a_changed_file_is_scored_again_once_and_another_threshold_is_refused(ray_local, photos, tmp_path):
    from ensemble.distributed.job import JobError, run_scan

    folder = tmp_path / "two"
    folder.mkdir()
    for name in ("photo0.jpg", "photo1.jpg"):
        shutil.copy(photos / name, folder / name)
    out = str(tmp_path / "scores.parquet")
    assert run_scan([folder], out).scored == 2
    with open(folder / "photo0.jpg", "ab") as f:
        f.write(b"\0" * 10)  # after the JPEG's end: still the same picture, but not the same file
    result = run_scan([folder], out)
    assert (result.scored, result.skipped, result.rescored) == (1, 1, 1)
    rows = by_path(read(out))
    assert rows[str(folder / "photo0.jpg")]["size"] == os.path.getsize(folder / "photo0.jpg")
    with pytest.raises(JobError, match="threshold") as refused:
        run_scan([folder], out, threshold=0.3)
    assert refused.value.usage


def test_the_command_line_scans_then_sorts_from_the_parquet_plan(ray_output, photos, plain, tmp_path, capsys):
    out = tmp_path / "cli.parquet"
    code = cli.main(["scan", str(photos), "--engine", "ray", "--output", str(out), "--batch-size", "4", "-q"])
    captured = capsys.readouterr()
    assert code == 1  # two unreadable files, each one line
    assert [line.split(":")[0] for line in captured.err.splitlines() if line.startswith("error:")] == ["error"] * 2
    blurry = sum(1 for r in plain.values() if r["label"] == "blurry")
    assert captured.out.strip().splitlines() == [
        f"{N_PHOTOS + 2} images: {blurry} blurry, {N_PHOTOS - blurry} sharp, 2 errors (threshold 50%); "
        f"1 part file written to {out}"]

    dest = tmp_path / "blurry"
    assert cli.main(["scan", str(photos), "--plan", str(out), "--move-blurry", str(dest), "--dry-run"]) == 0
    would = [line for line in capsys.readouterr().out.splitlines() if line.startswith("would move")]
    assert len(would) == blurry and not dest.exists()


def test_scale_travels_with_the_model_and_is_part_of_the_output_meta(model_without_native_meta):
    """--scale goes to every actor with the model (ShippedModel.scale, the actors' detector's own scale); the
    Parquet columns scale and content are text; an output is scored at one scale; 'native' with a model that
    has no native-scale meta-network is refused before any actor starts."""
    require_modules("pyarrow", extra="ray")
    import pyarrow as pa

    from ensemble.distributed.output import _meta_difference, meta
    from ensemble.distributed.scoring import ScaleError, load_detector, ship_model

    shipped = ship_model(scale="screen")
    assert shipped.scale == "screen" and ship_model().scale == "auto"
    assert load_detector(shipped.files, shipped.threshold, shipped.scale).scale == "screen"
    assert shipped.schema.field("scale").type == pa.string() and shipped.schema.field("content").type == pa.string()
    with pytest.raises(ValueError, match="scale must be one of"):
        ship_model(scale="huge")
    with pytest.raises(ScaleError, match="scale 'native': the model has no native-scale meta-network"):
        ship_model(model_without_native_meta, scale="native")
    assert ship_model(model_without_native_meta, scale="screen").scale == "screen"
    old, new = (meta(list(shipped.schema.names), shipped.digest, shipped.threshold, s) for s in ("auto", "screen"))
    assert _meta_difference(old, new) == "at scale auto, not screen" and _meta_difference(old, old) is None
