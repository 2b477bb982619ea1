"""Schemathesis against /openapi.json of a live ``blur-detect serve`` on loopback: no input may produce a 5xx.

The server runs as a real process (uvicorn, the CLI's own start-up), with an empty allowed data root so that no
generated request can start a training run. Examples are derandomised and few per operation, to stay quick.
"""
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from fixtures import REPO_ROOT

pytest.importorskip("fastapi")
schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402

EXAMPLES = 40


@pytest.fixture(scope="module")
def live_server(tmp_path_factory):
    """(base URL, process) of a server started by `python -m ensemble serve --port 0`."""
    tmp = tmp_path_factory.mktemp("live")
    (tmp / "data").mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "ensemble", "serve", "--port", "0", "--models-dir", str(tmp / "models"),
         "--data-root", str(tmp / "data"), "--max-upload-mb", "1", "--max-files", "4"],
        cwd=REPO_ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    url, seen = None, []
    deadline = time.monotonic() + 60
    while url is None and time.monotonic() < deadline:
        line = proc.stderr.readline()
        seen.append(line)
        if not line and proc.poll() is not None:
            break
        m = re.search(r"listening on (http://\S+)/", line)
        url = m.group(1) if m else None
    assert url, f"server did not start: {''.join(seen)}"
    yield url, proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)


@pytest.fixture(scope="module")
def api_schema(live_server):
    url, _ = live_server
    return schemathesis.openapi.from_url(f"{url}/openapi.json")


def operations() -> list[tuple[str, str]]:
    """(method, path) of every operation in the service's spec (built here only to name the tests)."""
    from ensemble.server.app import ServerSettings, create_app

    spec = create_app(ServerSettings(data_roots=())).openapi()
    return [(method.upper(), path) for path, item in spec["paths"].items() for method in item]


@pytest.mark.parametrize("method, path", operations(), ids=lambda x: x)
def test_no_input_produces_a_server_error(api_schema, live_server, method, path):
    from schemathesis import GenerationMode

    url, _ = live_server
    operation = api_schema[path][method]
    strategy = st.one_of(operation.as_strategy(GenerationMode.POSITIVE),
                         operation.as_strategy(GenerationMode.NEGATIVE))

    @given(case=strategy)
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def fuzz(case):
        case.call_and_validate(base_url=url, checks=[not_a_server_error], timeout=30)

    fuzz()


def test_server_logged_no_internal_error(live_server):
    """Runs after the fuzzing (same module, file order): the server stops cleanly and never logged a bug."""
    _, proc = live_server
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    assert "internal error" not in err and "Traceback" not in err, err[-3000:]
