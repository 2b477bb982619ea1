#!/usr/bin/env python3
"""Benchmark of ``blur-detect scan --engine ray``: Ray's throughput against the local scan on the same cores, the
serial parts measured on their own, and from them the throughput projected to 10, 100 and 1,000 nodes.

    .venv/bin/python benchmarks/bench_ray.py                          # the full run (several minutes)
    .venv/bin/python benchmarks/bench_ray.py --images 64 --list-files 2000 --write-rows 20000 --no-plot   # quick

Measures, in one run on a local Ray instance with ``--cores`` CPUs (started once; its start-up is reported apart,
since a cluster is up before a job comes):

1. throughput: a whole job over ``--images`` 12 MP JPEGs (hard links to a few distinct synthetic photos, made by
   benchmarks/bench_scan.py's generator), as ``--engine ray`` runs it (list, ship the model, start the actors,
   score, write Parquet) and as the local scan runs it (list, load the model, score on ``--cores`` threads, write
   jsonl), interleaved over ``--rounds`` rounds; the median ratio Ray / local (target >= 0.80). Also a Ray job's
   fixed cost (a job over two small files) and the steady ratio once it is paid;
2. the serial parts, each alone: listing files (files/s, ``--list-files`` empty files, with the stat each row
   needs), the driver's writer (rows/s, ``--write-rows`` records into Parquet parts), and the driver itself with
   actors that score nothing (rows/s through Ray Data and the writer, in tasks of 8 and of 1,024 files, from
   which its cost per task and per row);
3. the projection: with c the measured Ray images/s per core, L the listing rate and D the driver's rows/s at the
   task size the job gets, N cores give 1 / (1/L + max(1/(c N), 1/D)) images/s (the listing comes before the
   scoring; the driver works beside the actors, so the slower sets the pace); the limit is 1 / (1/L + 1/D) with
   tasks of 1,024 files. Printed for 10, 100 and 1,000 nodes of 16 cores, for ``--job-images`` files and for a job
   big enough for the largest tasks, with the cost per million images, and drawn to ``--plot``.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench_scan import generate, link_many, warm_cache  # benchmarks/bench_scan.py: the 12 MP photo helpers
from summary import print_summary, verdict

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

TARGET_RATIO = 0.80
NODES = (10, 100, 1000)
CORES_PER_NODE = 16


# --------------------------------------------------------------------------------------------------------------
# 1. Throughput


def local_job(folder: Path, cores: int, model, out: Path) -> float:
    """Seconds for the local scan's whole job: list, load the model, score on ``cores`` threads, write jsonl."""
    from ensemble.cli import _clean, error_record
    from ensemble.detector import BlurDetector
    from ensemble.scan import expand_paths, scan_paths

    start = time.perf_counter()
    inputs, _ = expand_paths([folder])
    detector = BlurDetector.load(model, threads=1).check()
    with open(out, "w", encoding="utf-8") as f:
        for s in scan_paths(inputs, detector, cores):
            record = s.result.record(s.path) if s.error is None else error_record(s.path, s.error)
            f.write(json.dumps(_clean(record)) + "\n")
    return time.perf_counter() - start


def ray_job(folder: Path, model, out: Path) -> tuple[float, int]:
    """(seconds, rows) for a whole ``--engine ray`` job into a fresh Parquet folder."""
    from ensemble.distributed.job import run_scan

    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    result = run_scan([folder], str(out), model=model)
    return time.perf_counter() - start, result.scored


# --------------------------------------------------------------------------------------------------------------
# 2. The serial parts


def listing_rate(folder: Path, n: int) -> float:
    """Files listed per second (with the stat each row needs) by the job's listing, over ``n`` empty .jpg files."""
    from ensemble.distributed.listing import list_inputs

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"f{i:07d}.jpg").touch()
    start = time.perf_counter()
    rows = list_inputs([folder], parallel=False).table.num_rows
    elapsed = time.perf_counter() - start
    assert rows == n, rows
    return n / elapsed


def fake_rows(n: int, start: int = 0) -> list[dict]:
    now = time.time_ns()
    return [{"path": f"/mnt/photos/2026/day{(start + i) // 1000:04d}/IMG_{start + i:08d}.jpg", "label": "sharp",
             "blur_probability": 0.123456, "laplacian_var": 456.789, "width": 4000, "height": 3000, "error": None,
             "size": 4_500_000, "mtime": now} for i in range(n)]


def writer_rate(folder: Path, n: int, batch: int, schema) -> float:
    """Rows per second through the driver's writer: batches of ``batch`` rows (as actors hand them back), deduped,
    gathered and written as Parquet parts."""
    from ensemble.distributed.output import Output, meta, to_table

    tables = [to_table(fake_rows(batch, i), schema) for i in range(0, n, batch)]
    output = Output(str(folder))
    output.prepare(meta(schema.names, "bench", 0.5))
    writer = output.writer(schema, rows_per_part=100_000)
    start = time.perf_counter()
    for table in tables:
        writer.add(table)
    writer.flush()
    return writer.rows / (time.perf_counter() - start)


class Echo:
    """An actor that scores nothing: each listing row gets a copy of one fixed record, so what is left to time is
    Ray's work and the driver's."""

    def __init__(self, schema):
        self.schema = schema
        self.template = None

    def __call__(self, batch):
        from ensemble.distributed.output import to_table

        if self.template is None or self.template.num_rows < batch.num_rows:
            self.template = to_table(fake_rows(batch.num_rows), self.schema)
        return self.template.slice(0, batch.num_rows).set_column(0, "path", batch.column("path"))


def head_cpu_seconds() -> float:
    """CPU seconds used so far by this process (the driver) and the head node's raylet and GCS server: the
    serial part of a job, which more nodes do not share out."""
    times = os.times()
    total = times.user + times.system
    tick = os.sysconf("SC_CLK_TCK")
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                command = f.read().split(b"\0")[0]
            if not command.endswith((b"/raylet", b"/gcs_server")):
                continue
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def dispatch_rate(folder: Path, tasks: int, task_files: int, cores: int, schema) -> tuple[float, float]:
    """(rows per second of wall time, rows per CPU second of the head: :func:`head_cpu_seconds`) through Ray Data
    and the driver's writer with actors that score nothing, ``task_files`` rows per Ray task, from the first result
    on (the actors' start is a job's fixed cost, measured apart). Here the actors share this machine's cores with
    the driver, so the wall rate is low; on a cluster they do not, and the head's CPU is what bounds it."""
    import pyarrow as pa
    import ray.data

    from ensemble.distributed.output import Output, meta
    from ensemble.distributed.scoring import DEFAULT_BATCH_SIZE, input_dataset

    n = tasks * task_files
    listing = pa.table({"path": [r["path"] for r in fake_rows(n)]})
    dataset, blocks = input_dataset(listing, task_files)
    records = dataset.map_batches(Echo, fn_constructor_kwargs={"schema": schema},
                                  compute=ray.data.ActorPoolStrategy(size=min(cores, blocks)), num_cpus=1,
                                  batch_size=min(task_files, DEFAULT_BATCH_SIZE), batch_format="pyarrow")
    shutil.rmtree(folder, ignore_errors=True)
    output = Output(str(folder))
    output.prepare(meta(schema.names, "bench", 0.5))
    writer = output.writer(schema)
    start, first, cpu = None, 0, 0.0
    for table in records.iter_batches(batch_format="pyarrow", batch_size=None):
        if start is None:
            start, first, cpu = time.perf_counter(), table.num_rows, head_cpu_seconds()
        writer.add(table)
    writer.flush()
    assert writer.rows == n, writer.rows
    return (n - first) / (time.perf_counter() - start), (n - first) / (head_cpu_seconds() - cpu)


def driver_cost(small: float, big: float, b_small: int, b_big: int) -> tuple[float, float]:
    """(seconds per row, seconds per task) of the head, from its rows per CPU second at two task sizes:
    1/rate = a + b / B."""
    b = (1 / small - 1 / big) / (1 / b_small - 1 / b_big)
    return max(0.0, 1 / big - b / b_big), max(0.0, b)


# --------------------------------------------------------------------------------------------------------------
# 3. Projection


def projected(cores: float, per_core: float, listing: float, driver: float, tasks: float = math.inf) -> float:
    """Images/s of ``cores`` cores: listing before scoring; the driver's ``driver`` rows/s beside the actors;
    no more cores busy than the job has ``tasks``."""
    return 1.0 / (1.0 / listing + max(1.0 / (per_core * min(cores, tasks)), 1.0 / driver))


def draw(path: Path, per_core: float, limit: float, job_rate, job: int, measured: tuple[int, float]) -> None:
    """The projection against cores, log-log: linear, a job of ``job`` files and a big one (``job_rate(files,
    cores)``), the limit, the three cluster sizes marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cores = np.unique(np.logspace(0, math.log10(CORES_PER_NODE * NODES[-1] * 4), 200).astype(int))
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=120)
    ax.loglog(cores, per_core * cores, ":", color="grey", label=f"linear: {per_core:.2f} images/s per core")
    ax.loglog(cores, [job_rate(10**12, int(c)) for c in cores], color="C0",
              label="projected, a big job (tasks of 1,024 files)")
    ax.loglog(cores, [job_rate(job, int(c)) for c in cores], color="C1",
              label=f"projected, a job of {job / 1e6:g} million images")
    ax.axhline(limit, color="C3", linestyle="--", label=f"limit: {limit:,.0f} images/s")
    for n in NODES:
        c = n * CORES_PER_NODE
        for files, colour, dy in ((10**12, "C0", 12), (job, "C1", -26)):
            x = job_rate(files, c)
            ax.plot([c], [x], "o", color=colour)
            ax.annotate(f"{n:,} nodes: {x:,.0f}/s", (c, x), textcoords="offset points", xytext=(-8, dy),
                        ha="right", fontsize=7, color=colour)
    ax.plot([measured[0]], [measured[1]], "s", color="C2", label=f"measured: {measured[0]} cores, {measured[1]:.1f}/s")
    ax.set_xlabel("cores (16 per node)")
    ax.set_ylabel("12 MP images per second")
    ax.set_title("blur-detect scan --engine ray: projected throughput")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# --------------------------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    from ensemble.cli_common import HelpFormatter

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    p.add_argument("--images", type=int, default=960, help="12 MP files per throughput job")
    p.add_argument("--distinct", type=int, default=12, help="distinct photos behind those files")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds of local and Ray jobs (median)")
    p.add_argument("--cores", type=int, default=0, help="CPUs for both engines (0: all of this machine's)")
    p.add_argument("--list-files", type=int, default=50_000, help="files in the listing measurement")
    p.add_argument("--write-rows", type=int, default=500_000, help="rows in the writer measurement")
    p.add_argument("--dispatch-tasks", type=int, default=400, help="Ray tasks in the small-task driver measurement")
    p.add_argument("--job-images", type=int, default=5_000_000, help="the job the projection is made for")
    p.add_argument("--price", type=float, default=0.05, help="price of one core-hour, in dollars, for the cost")
    p.add_argument("--plot", type=Path, default=REPO / "docs" / "ray_scaling.png", help="where to draw the projection")
    p.add_argument("--no-plot", action="store_true", help="do not draw the projection")
    p.add_argument("--model", help="model folder (default: the shipped model)")
    a = p.parse_args(argv)

    import ray

    from ensemble.distributed.scoring import DEFAULT_BATCH_SIZE, MAX_TASK_FILES, ship_model, task_files
    from ensemble.scan import default_workers

    cores = a.cores or default_workers()
    tmp = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    rows: list[tuple[str, str, str]] = []
    try:
        print(f"generating {a.distinct} photos of 4000x3000 and {a.images} links to them in {tmp} ...", flush=True)
        distinct = generate(tmp / "distinct", a.distinct, (4000, 3000))
        folder = link_many(distinct, tmp / "photos", a.images)
        warm_cache(distinct)
        tiny = link_many(distinct[:2], tmp / "tiny", 2)

        start = time.perf_counter()
        ray.init(num_cpus=cores, include_dashboard=False, logging_level=logging.ERROR)
        ray.data.DataContext.get_current().enable_progress_bars = False
        logging.getLogger("ray.data").setLevel(logging.ERROR)
        startup = time.perf_counter() - start
        print(f"Ray start-up (ray.init, {cores} CPUs): {startup:.1f} s", flush=True)

        # -- 1: throughput, interleaved so that a busy spell on the machine hits both alike ----------------------
        ray_job(tiny, a.model, tmp / "warm.parquet")  # Ray's first job also starts its worker pool: not counted
        local_t, ray_t, ratios = [], [], []
        for r in range(max(1, a.rounds)):
            lt = local_job(folder, cores, a.model, tmp / "local.jsonl")
            rt, n = ray_job(folder, a.model, tmp / "ray.parquet")
            if n != a.images:
                raise SystemExit(f"the Ray job scored {n} of {a.images} files")
            local_t.append(lt)
            ray_t.append(rt)
            ratios.append(lt / rt)
            print(f"round {r + 1}: local {a.images / lt:.2f} images/s, Ray {a.images / rt:.2f} images/s, "
                  f"ratio {lt / rt:.2f}", flush=True)
        fixed = statistics.median(ray_job(tiny, a.model, tmp / "tiny.parquet")[0] for _ in range(3))
        local_rate, ray_rate = a.images / statistics.median(local_t), a.images / statistics.median(ray_t)
        ratio = statistics.median(ratios)
        steady = (a.images / max(1e-9, statistics.median(ray_t) - fixed)) / local_rate
        per_core = ray_rate / cores
        print(f"median: local {local_rate:.2f} images/s, Ray {ray_rate:.2f} images/s, Ray / local {ratio:.2f}; "
              f"a Ray job's fixed cost {fixed:.1f} s; steady Ray / local {steady:.2f}", flush=True)
        rows += [("Ray start-up, ray.init (s)", f"{startup:.1f}", "once per cluster"),
                 ("local scan job (img/s)", f"{local_rate:.2f}", f"{a.images} x 12 MP, {cores} cores"),
                 ("Ray job (img/s)", f"{ray_rate:.2f}", f"{per_core:.2f} per core"),
                 ("Ray / local", f"{ratio:.2f}", verdict(ratio >= TARGET_RATIO, f">= {TARGET_RATIO:.2f}")),
                 ("Ray job fixed cost (s)", f"{fixed:.1f}", "2 files: list, actors, write"),
                 ("Ray / local, fixed cost paid", f"{steady:.2f}", "")]

        # -- 2: the serial parts -------------------------------------------------------------------------------
        schema = ship_model(a.model).schema
        listing = listing_rate(tmp / "listing", a.list_files)
        shutil.rmtree(tmp / "listing", ignore_errors=True)
        writing = writer_rate(tmp / "written.parquet", a.write_rows, DEFAULT_BATCH_SIZE, schema)
        small_wall, small = dispatch_rate(tmp / "dispatch.parquet", a.dispatch_tasks, DEFAULT_BATCH_SIZE, cores,
                                          schema)
        big_wall, big = dispatch_rate(tmp / "dispatch.parquet", max(4, a.dispatch_tasks // 8), MAX_TASK_FILES,
                                      cores, schema)
        per_row, per_task = driver_cost(small, big, DEFAULT_BATCH_SIZE, MAX_TASK_FILES)
        print(f"serial parts: listing {listing:,.0f} files/s; writing {writing:,.0f} rows/s; the head (driver, "
              f"raylet, GCS) with actors that score nothing: {small:,.0f} rows per CPU second in tasks of "
              f"{DEFAULT_BATCH_SIZE} ({small_wall:,.0f} rows/s here), {big:,.0f} in tasks of {MAX_TASK_FILES} "
              f"({big_wall:,.0f} rows/s here): {1e3 * per_task:.1f} ms per task + {1e6 * per_row:.1f} us per row",
              flush=True)
        rows += [("listing (files/s)", f"{listing:,.0f}", f"{a.list_files:,} files, with stat"),
                 ("writing (rows/s)", f"{writing:,.0f}", f"{a.write_rows:,} rows to Parquet"),
                 (f"head, tasks of {DEFAULT_BATCH_SIZE} (rows/CPU s)", f"{small:,.0f}",
                  f"{small_wall:,.0f} rows/s here, actors sharing the cores"),
                 (f"head, tasks of {MAX_TASK_FILES} (rows/CPU s)", f"{big:,.0f}",
                  f"{big_wall:,.0f} rows/s here, actors sharing the cores"),
                 ("head per task (ms CPU)", f"{1e3 * per_task:.1f}", f"+ {1e6 * per_row:.1f} us per row")]

        # -- 3: projection -----------------------------------------------------------------------------------------
        def driver_rate(files: int, actors: int) -> float:
            return 1.0 / (per_row + per_task / task_files(files, actors))

        def job_rate(files: int, c: int) -> float:
            return projected(c, per_core, listing, driver_rate(files, c), math.ceil(files / task_files(files, c)))

        big_job = driver_rate(10**12, 1)  # tasks of MAX_TASK_FILES: a job of at least 16,384 files per core
        limit = 1.0 / (1.0 / listing + 1.0 / big_job)
        core_hours = 1e6 / (per_core * 3600)
        print(f"projection at {per_core:.2f} images/s per core (limit {limit:,.0f} images/s):")
        for n in NODES:
            c = n * CORES_PER_NODE
            for label, files in ((f"{a.job_images / 1e6:g}M images", a.job_images), ("a big job", 10**12)):
                x = job_rate(files, c)
                print(f"  {n:>5,} nodes x {CORES_PER_NODE} cores, {label}: {x:>9,.0f} images/s "
                      f"({100 * x / (per_core * c):.0f} % of linear; tasks of {task_files(files, c)} files)")
                rows.append((f"{n:,} nodes, {label} (img/s)", f"{x:,.0f}",
                             f"{100 * x / (per_core * c):.0f} % of linear"))
        rows += [("limit (img/s)", f"{limit:,.0f}", "1 / (1/listing + 1/driver)"),
                 ("core-hours per million images", f"{core_hours:.0f}", f"${core_hours * a.price:,.2f} at "
                                                                         f"${a.price}/core-hour")]
        if not a.no_plot:
            draw(a.plot, per_core, limit, job_rate, a.job_images, (cores, ray_rate))
            print(f"plot: {a.plot}")
    finally:
        if ray.is_initialized():
            ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    return print_summary(rows)


if __name__ == "__main__":
    raise SystemExit(main())
