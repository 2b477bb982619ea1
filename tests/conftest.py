"""Session-wide set-up: the journal key lives in a temporary folder, never in the user's home."""
import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def private_data_home(tmp_path_factory):
    # Sorting signs its journals with a per-user key in $XDG_DATA_HOME; subprocesses inherit this too.
    old = os.environ.get("XDG_DATA_HOME")
    os.environ["XDG_DATA_HOME"] = str(tmp_path_factory.mktemp("data-home"))
    yield
    if old is None:
        os.environ.pop("XDG_DATA_HOME", None)
    else:
        os.environ["XDG_DATA_HOME"] = old
