#!/usr/bin/env python3
"""Benchmark of ``blur-detect serve``: prediction latency, behaviour under load, and memory over many requests.

    .venv/bin/python benchmarks/bench_server.py                              # the full run (a few minutes)
    .venv/bin/python benchmarks/bench_server.py --latency-runs 5 --clients 4 --per-client 5 --memory-requests 400

Measures, in one run, against a real server process (``python -m ensemble serve --port 0``, one worker unless
``--workers``) on loopback, with keep-alive HTTP clients:

1. latency: ``POST /api/predict`` of one synthetic 12 MP (4000 x 3000) JPEG, one request at a time after
   ``--warmup`` requests; median and 90th percentile of the client-side time (target: median <= 250 ms). Twice:
   with the synthetic photo (smooth, so a small file), and with the same photo plus sensor-like noise saved at
   quality 95, which makes a file the size a 12 MP camera writes (about 5 MB), so the upload is timed fairly;
2. load: ``--clients`` concurrent clients (20) each sending ``--per-client`` requests (20) of 12 MP JPEGs; the
   errors (target: none), the throughput, and the median and 99th-percentile latency;
3. memory: the server's resident memory (VmRSS of its process) over ``--memory-requests`` requests (2,000) from 4
   clients, a mix of small and 12 MP JPEGs, batches holding a corrupt file, and refused uploads (415, 413), so
   that the error paths are exercised too. It is sampled every 200 requests; the ratio last / first sample after
   warm-up must stay within 10 %.
"""
from __future__ import annotations

import argparse
import io
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(REPO / "benchmarks")]

from bench_scan import child_env, generate  # noqa: E402  (same synthetic photos as the scan benchmark)

from summary import print_summary, verdict  # benchmarks/summary.py, beside this script

TARGET_P50_S = 0.250
TARGET_RSS_DRIFT = 0.10


def start_server(models_dir: Path, workers: int, max_files: int) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "ensemble", "serve", "--port", "0", "--models-dir", str(models_dir),
           "--workers", str(workers), "--log-level", "warning", "--max-files", str(max_files)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=child_env())
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        m = re.search(r"listening on (http://\S+)/", line)
        if m:
            # Keep draining stderr so the server never blocks on a full pipe.
            threading.Thread(target=proc.stderr.read, daemon=True).start()
            return proc, m.group(1)
    raise RuntimeError("server did not start")


def wait_healthy(url: str) -> None:
    import httpx

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError("server never became healthy")


def rss_bytes(pid: int) -> int:
    """Resident memory of a process and its children (the workers of --workers N), from /proc."""
    total = 0
    pids = [pid]
    try:
        pids += [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        pass
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def post(client, url: str, files: list[tuple[str, bytes]]) -> tuple[int, float]:
    start = time.perf_counter()
    r = client.post(f"{url}/api/predict", files=[("files", (name, data, "image/jpeg")) for name, data in files])
    elapsed = time.perf_counter() - start
    if r.status_code == 200 and not isinstance(r.json(), list):
        return -1, elapsed
    return r.status_code, elapsed


def measure_latency(url: str, jpeg: bytes, warmup: int, runs: int) -> list[float]:
    import httpx

    with httpx.Client(timeout=60) as client:
        for _ in range(warmup):
            post(client, url, [("warm.jpg", jpeg)])
        times = []
        for _ in range(runs):
            status, elapsed = post(client, url, [("photo.jpg", jpeg)])
            if status != 200:
                raise RuntimeError(f"latency request failed with {status}")
            times.append(elapsed)
    return times


def measure_load(url: str, jpegs: list[bytes], clients: int, per_client: int) -> tuple[list[float], int, float]:
    """(latencies, errors, wall seconds) of ``clients`` concurrent clients sending ``per_client`` requests each."""
    import httpx

    barrier = threading.Barrier(clients)

    def one_client(k: int) -> tuple[list[float], int]:
        times, errors = [], 0
        with httpx.Client(timeout=120) as client:
            barrier.wait()
            for i in range(per_client):
                try:
                    status, elapsed = post(client, url, [(f"c{k}-{i}.jpg", jpegs[(k + i) % len(jpegs)])])
                except httpx.HTTPError:
                    status, elapsed = -1, 0.0
                if status == 200:
                    times.append(elapsed)
                else:
                    errors += 1
        return times, errors

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one_client, range(clients)))
    wall = time.perf_counter() - start
    return [t for times, _ in results for t in times], sum(e for _, e in results), wall


def measure_memory(url: str, pid: int, small: bytes, large: bytes, total: int, every: int = 200) -> list[int]:
    """RSS samples (bytes) every ``every`` requests over ``total`` mixed requests from 4 clients."""
    import httpx

    corrupt = large[: len(large) // 3]
    counter = iter(range(total))
    lock = threading.Lock()
    samples: list[int] = []
    unexpected: list[str] = []

    def plan(i: int) -> tuple[list[tuple[str, bytes]], int]:
        if i % 50 == 49:
            return [("notes.jpg", b"plain text, not an image" * 4)], 415
        if i % 20 == 19:
            return [("big.jpg", large)], 200
        if i % 10 == 9:
            return [("a.jpg", small), ("cut.jpg", corrupt), ("b.jpg", small)], 200
        return [("small.jpg", small)], 200

    def worker() -> None:
        with httpx.Client(timeout=120) as client:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                files, expected = plan(i)
                status, _ = post(client, url, files)
                if status != expected:
                    unexpected.append(f"request {i}: {status}, expected {expected}")
                if (i + 1) % every == 0:
                    samples.append(rss_bytes(pid))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if unexpected:
        raise RuntimeError(f"{len(unexpected)} unexpected answers, first: {unexpected[0]}")
    return samples


def jpeg_of(path: Path) -> bytes:
    return path.read_bytes()


def noisy_jpeg(path: Path) -> bytes:
    """The photo at ``path`` with Gaussian noise (sigma 6 grey levels) at quality 95: camera-sized bytes."""
    import numpy as np
    from PIL import Image

    img = np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)
    noise = np.random.default_rng(0).normal(0, 6, img.shape).astype(np.int16)
    buf = io.BytesIO()
    Image.fromarray(np.clip(img + noise, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def small_jpeg() -> bytes:
    from PIL import Image

    from fixtures import make_photo

    buf = io.BytesIO()
    Image.fromarray(make_photo(7, (768, 1024))).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, default=1, help="server processes (default: 1)")
    p.add_argument("--warmup", type=int, default=5, help="requests before the latency is timed (default: 5)")
    p.add_argument("--latency-runs", type=int, default=30, help="timed sequential requests (default: 30)")
    p.add_argument("--clients", type=int, default=20, help="concurrent clients in the load test (default: 20)")
    p.add_argument("--per-client", type=int, default=20, help="requests per client (default: 20)")
    p.add_argument("--memory-requests", type=int, default=2000, help="requests in the memory test (default: 2000)")
    a = p.parse_args(argv)
    if a.memory_requests < 400:
        p.error("--memory-requests must be at least 400: RSS is sampled every 200 requests, first and last compared")

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-server-") as tmp:
        tmp = Path(tmp)
        print("generating 4 synthetic 12 MP JPEGs ...", flush=True)
        paths = generate(tmp / "photos", 4, (4000, 3000))
        photos = [jpeg_of(path) for path in paths]
        camera = noisy_jpeg(paths[0])
        small = small_jpeg()
        proc, url = start_server(tmp / "models", a.workers, max_files=8)
        try:
            wait_healthy(url)
            print(f"server at {url}, pid {proc.pid}, {a.workers} worker(s); 12 MP JPEGs of "
                  f"{statistics.mean(map(len, photos)) / 2**20:.1f} MB", flush=True)

            for label, jpeg in (("12 MP JPEG", photos[0]), ("12 MP camera-sized JPEG", camera)):
                times = measure_latency(url, jpeg, a.warmup, a.latency_runs)
                p50, p90 = statistics.median(times), percentile(times, 0.9)
                print(f"latency, one {label} ({len(jpeg) / 2**20:.1f} MB): p50 {p50 * 1000:.0f} ms, "
                      f"p90 {p90 * 1000:.0f} ms ({a.latency_runs} requests)", flush=True)
                rows.append((f"{label} ({len(jpeg) / 2**20:.1f} MB) latency p50 (ms)", f"{p50 * 1000:.0f}",
                             verdict(p50 <= TARGET_P50_S, f"<= {TARGET_P50_S * 1000:.0f} ms")))
                rows.append((f"{label} latency p90 (ms)", f"{p90 * 1000:.0f}", ""))

            n = a.clients * a.per_client
            lat, errors, wall = measure_load(url, photos, a.clients, a.per_client)
            rate = (n - errors) / wall
            print(f"load, {a.clients} clients x {a.per_client} requests: {errors} errors, {rate:.1f} requests/s, "
                  f"p50 {statistics.median(lat) * 1000:.0f} ms, p99 {percentile(lat, 0.99) * 1000:.0f} ms "
                  f"({wall:.1f} s)", flush=True)
            rows.append((f"load: errors in {n} requests", f"{errors}", verdict(errors == 0, "0")))
            rows.append(("load: throughput (requests/s)", f"{rate:.1f}", ""))
            rows.append(("load: latency p50 (ms)", f"{statistics.median(lat) * 1000:.0f}", ""))
            rows.append(("load: latency p99 (ms)", f"{percentile(lat, 0.99) * 1000:.0f}", ""))

            start = time.perf_counter()
            samples = measure_memory(url, proc.pid, small, photos[1], a.memory_requests)
            wall = time.perf_counter() - start
            first, last, peak = samples[0], samples[-1], max(samples)
            drift = last / first - 1
            print(f"memory over {a.memory_requests} requests ({a.memory_requests / wall:.1f} requests/s): RSS "
                  + ", ".join(f"{s / 2**20:.0f}" for s in samples) + " MiB", flush=True)
            rows.append(("RSS after the first 200 requests (MiB)", f"{first / 2**20:.0f}", ""))
            rows.append((f"RSS after {a.memory_requests} requests (MiB)", f"{last / 2**20:.0f}", ""))
            rows.append(("RSS peak of the samples (MiB)", f"{peak / 2**20:.0f}", ""))
            rows.append(("RSS last / first - 1", f"{drift:+.1%}",
                         verdict(abs(drift) <= TARGET_RSS_DRIFT, f"within {TARGET_RSS_DRIFT:.0%}")))
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()

    return print_summary(rows)


if __name__ == "__main__":
    raise SystemExit(main())
