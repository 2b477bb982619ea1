#!/usr/bin/env python3
"""Benchmark of decode memory: peak RSS above idle for each kind of decompression bomb, in ``scan``, ``serve`` and
``cameras``, at 2 and 16 workers, against the 1 GiB limit (ensemble.imageio.DECODE_BUDGET).

    .venv/bin/python benchmarks/bench_memory.py                  # the full run (a few minutes)
    .venv/bin/python benchmarks/bench_memory.py --workers 2 --copies 2 --surfaces scan   # a quick check

The bombs (tests/bombs.py, built in a temporary folder, each 0.02-1.4 MB on disk):

* ``rgba16.png``: 12000 × 12000 16-bit RGBA PNG (144 MP; 1.1 GB of samples);
* ``grey16.png``: 12000 × 12000 16-bit grey PNG;
* ``forged.jpg``: a 640 × 480 JPEG whose header claims 65000 × 2000 (must be an error record);
* ``over.tif``: 12000 × 12000 16-bit RGBA TIFF in one deflate strip, whose libtiff strip buffer alone is 1.1 GB
  (over the budget: must be refused without being decoded).

Each surface gets ``--copies`` of a bomb at once, so that the workers would decode them side by side:

* **scan**: ``blur-detect scan DIR --workers N`` (launched as for serve, below, so that 16 workers are not capped
  to 4 per core) on a folder of hard links; the peak RSS of the child (``wait4``)
  against that of the same scan of as many ordinary photos (idle: the model loaded and run, nothing big decoded;
  a bomb refused before decoding therefore comes out below it);
* **serve**: one ``blur-detect serve`` process scoring on N threads (the CLI scores on one thread per core, so the
  benchmark launches it with ``ensemble.scan.default_workers`` returning N); idle RSS after two warm-up requests,
  then per request (one bomb, then ``--copies`` bombs in one ``/api/predict``) the peak (``VmHWM``, reset through
  ``/proc/PID/clear_refs``) and the RSS a second after the answer, which must be within 10 % of idle;
* **cameras**: ``blur-detect cameras CSV --workers N`` on ``--copies`` cameras whose snapshot URL (a local HTTP
  server on 127.0.0.1) serves the bomb; peak RSS against that of the same check on cameras serving a photo.

Exit status 1 if any row fails.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(REPO / "benchmarks")]

import bombs  # noqa: E402  (tests/bombs.py)

LIMIT_MIB = 1024
AFTER_TOLERANCE = 0.10
MiB = 1 << 20


# Runs ``blur-detect ARGS`` with ``ensemble.scan.default_workers()`` returning N: the server scores on that many
# threads, and ``scan`` accepts that many workers (it caps --workers at 4 per core).
LAUNCHER = ("import sys, ensemble.scan as s; n = int(sys.argv.pop(1)); s.default_workers = lambda: n; "
            "from ensemble.cli import main; sys.exit(main(sys.argv[1:]))")


def child_env() -> dict:
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))


def make_bombs(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    made = {
        "rgba16.png": bombs.png_bomb(folder / "rgba16.png", 12000, 12000, 16, bombs.RGBA),
        "grey16.png": bombs.png_bomb(folder / "grey16.png", 12000, 12000, 16, bombs.GREY),
        "forged.jpg": bombs.forged_jpeg(folder / "forged.jpg"),
        "over.tif": bombs.tiff_bomb(folder / "over.tif", 12000, 12000, 4, 16),
    }
    photo = folder / "photo.jpg"
    from fixtures import make_photo, save_jpeg

    save_jpeg(photo, make_photo(5, (480, 640)))
    made["photo"] = photo
    return made


def run_peak(cmd: list[str], out: Path) -> tuple[int, float]:
    """(exit status, peak RSS in MiB) of a child process, its stdout written to ``out``."""
    with open(out, "wb") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.PIPE, env=child_env())
        err = []
        t = threading.Thread(target=lambda: err.append(proc.stderr.read()), daemon=True)
        t.start()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        t.join()
    stderr = err[0].decode(errors="replace") if err else ""
    if "Warning" in stderr:
        print(f"  warning on stderr of {' '.join(cmd[:4])}...: {stderr.strip()[-200:]}", file=sys.stderr)
    return proc.returncode, usage.ru_maxrss / 1024  # kB on Linux


# --------------------------------------------------------------------------------------------------------------
# scan


def bench_scan(made: dict, work: Path, workers: int, copies: int, bomb_names: list[str]) -> list[dict]:
    rows = []
    # Through the launcher: ``scan`` caps --workers at 4 per core, and 16 workers are the point here.
    cmd = [sys.executable, "-c", LAUNCHER, str(workers), "scan", "-q", "--format", "jsonl", "--workers", str(workers)]
    photos = work / f"scan-photos-{workers}"
    photos.mkdir()
    for i in range(copies):
        os.link(made["photo"], photos / f"{i}-photo.jpg")
    _, idle = run_peak(cmd + [str(photos)], work / "idle.jsonl")
    for name in bomb_names:
        folder = work / f"scan-{name}-{workers}"
        folder.mkdir()
        for i in range(copies):
            os.link(made[name], folder / f"{i}-{name}")
        rc, peak = run_peak(cmd + [str(folder)], work / "scan.jsonl")
        records = [json.loads(line) for line in (work / "scan.jsonl").read_text().splitlines() if line.strip()]
        rows.append(dict(surface="scan", bomb=f"{copies} x {name}", workers=workers, idle=idle, peak=peak,
                         outcome=_outcome(records)))
    return rows


def _outcome(records: list[dict]) -> str:
    errors = sorted({r["error"] for r in records if r.get("error")})
    scored = sum(1 for r in records if not r.get("error"))
    if errors:
        reason = errors[0]
        reason = reason if len(reason) <= 60 else reason[:57] + "..."
        return f"{len(records) - scored} error ({reason})" + (f", {scored} scored" if scored else "")
    return f"{scored} scored"


# --------------------------------------------------------------------------------------------------------------
# serve



def status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1])
    raise KeyError(key)


def bench_serve(made: dict, work: Path, workers: int, copies: int, bomb_names: list[str]) -> list[dict]:
    import httpx

    cmd = [sys.executable, "-c", LAUNCHER, str(workers), "serve", "--port", "0", "--models-dir",
           str(work / f"models-{workers}"), "--log-level", "warning"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=child_env())
    try:
        url = None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and url is None:
            line = proc.stderr.readline()
            if not line and proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}")
            m = re.search(r"listening on (http://\S+)/", line)
            url = m.group(1) if m else None
        if url is None:
            raise RuntimeError("server did not start")
        threading.Thread(target=proc.stderr.read, daemon=True).start()
        client = httpx.Client(timeout=600)

        def post(paths: list[Path]) -> list[dict]:
            r = client.post(f"{url}/api/predict",
                            files=[("files", (p.name, p.read_bytes(), "application/octet-stream")) for p in paths])
            r.raise_for_status()
            return r.json()

        for _ in range(2):  # warm-up: every scoring thread's first decode and ONNX call
            post([made["photo"]] * copies)
        time.sleep(1.0)
        idle = status_kib(proc.pid, "VmRSS:") / 1024
        rows = []
        requests = [(name, [made[name]]) for name in bomb_names]
        requests.append((f"{copies} x rgba16.png in one request", [made["rgba16.png"]] * copies))
        for label, paths in requests:
            Path(f"/proc/{proc.pid}/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
            records = post(paths)
            peak = status_kib(proc.pid, "VmHWM:") / 1024
            time.sleep(1.0)
            after = status_kib(proc.pid, "VmRSS:") / 1024
            rows.append(dict(surface="serve", bomb=label, workers=workers, idle=idle, peak=peak,
                             outcome=_outcome(records), after=after))
        return rows
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


# --------------------------------------------------------------------------------------------------------------
# cameras


class _Snapshots(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, files: dict[str, Path]):
        self.files = {name: (path.read_bytes(), "image/png" if path.suffix == ".png" else
                             "image/tiff" if path.suffix == ".tif" else "image/jpeg") for name, path in files.items()}

        class Handler(BaseHTTPRequestHandler):
            def do_GET(handler):  # noqa: N805 - the server is self
                data, ctype = self.files[handler.path.strip("/").split("-")[0]]
                handler.send_response(200)
                handler.send_header("Content-Type", ctype)
                handler.send_header("Content-Length", str(len(data)))
                handler.end_headers()
                handler.wfile.write(data)

            def log_message(handler, *args):  # noqa: N805
                pass

        super().__init__(("127.0.0.1", 0), Handler)


def bench_cameras(made: dict, work: Path, workers: int, copies: int, bomb_names: list[str]) -> list[dict]:
    server = _Snapshots(made)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        def check(name: str, n: int) -> tuple[float, list[dict]]:
            config = work / f"cams-{name}-{workers}.csv"
            lines = ["name,url,timeout"] + [f"cam{i},http://127.0.0.1:{server.server_address[1]}/{name}-{i},60"
                                            for i in range(n)]
            config.write_text("\n".join(lines) + "\n")
            cmd = [sys.executable, "-m", "ensemble", "cameras", str(config), "--format", "json",
                   "--workers", str(workers), "--state", str(work / f"state-{name}-{workers}.json")]
            _, peak = run_peak(cmd, work / "cams.json")
            report = json.loads((work / "cams.json").read_text() or "{}")
            return peak, report.get("cameras", report.get("checks", []))

        idle, _ = check("photo", copies)
        rows = []
        for name in bomb_names:
            peak, cams = check(name, copies)
            states = sorted({f"{c.get('state')}" + (f" ({c.get('reason')})" if c.get("reason") else "")
                             for c in cams})
            outcome = "; ".join(states)
            rows.append(dict(surface="cameras", bomb=f"{copies} x {name}", workers=workers, idle=idle, peak=peak,
                             outcome=outcome if len(outcome) <= 70 else outcome[:67] + "..."))
        return rows
    finally:
        server.shutdown()
        server.server_close()


# --------------------------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, nargs="+", default=[2, 16])
    ap.add_argument("--copies", type=int, default=4, help="bombs decoded at once by each surface (default: 4)")
    ap.add_argument("--surfaces", nargs="+", default=["scan", "serve", "cameras"],
                    choices=["scan", "serve", "cameras"])
    ap.add_argument("--bombs", nargs="+", default=["rgba16.png", "grey16.png", "forged.jpg", "over.tif"])
    args = ap.parse_args()

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        work = Path(tmp)
        made = make_bombs(work / "bombs")
        sizes = ", ".join(f"{n} {made[n].stat().st_size / 1e6:.2f} MB" for n in args.bombs)
        print(f"bombs: {sizes}", flush=True)
        rows = []
        for surface in args.surfaces:
            for workers in args.workers:
                fn = {"scan": bench_scan, "serve": bench_serve, "cameras": bench_cameras}[surface]
                got = fn(made, work, workers, args.copies, args.bombs)
                for r in got:
                    r["above"] = r["peak"] - r["idle"]
                    print(f"  {r['surface']:7s} {r['workers']:2d} workers  {r['bomb']:36s} "
                          f"{r['above']:+6.0f} MiB  {r['outcome']}", flush=True)
                rows += got

    failed = False
    print("\n| surface | bomb | workers | idle RSS | peak RSS | above idle | limit | result | after the request "
          "| outcome |")
    print("|---|---|---:|---:|---:|---:|---:|---|---|---|")
    for r in rows:
        ok = r["above"] <= LIMIT_MIB
        after = ""
        if "after" in r:
            drift = (r["after"] - r["idle"]) / r["idle"]
            ok = ok and drift <= AFTER_TOLERANCE
            after = f"{r['after']:,.0f} MiB ({drift:+.1%})"
        failed |= not ok
        print(f"| {r['surface']} | {r['bomb']} | {r['workers']} | {r['idle']:,.0f} MiB | {r['peak']:,.0f} MiB | "
              f"{r['above']:+,.0f} MiB | {LIMIT_MIB:,} MiB | {'pass' if ok else 'FAIL'} | {after} | "
              f"{r['outcome']} |")
    print(f"\n{len(rows)} rows in {time.monotonic() - started:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
