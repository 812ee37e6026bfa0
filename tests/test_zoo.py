"""Issue 10's promise on a zoo of standard Keras models: every model Keras can load is served, and served right.

For each entry of tests/zoo.py: kvd (one for the session) serves it on a named backend at a recorded precision
rung, and its answers on fresh inputs drawn like the model's real ones agree with Keras (computed here, in the
test process) within the tolerance the manifest records; or, for what must be refused (a Lambda without
opt-in, a custom class no plugin registers), the refusal is one plain line naming the class.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import pytest

import zoo
from conftest import Kvd, start_kvd

pytestmark = pytest.mark.zoo

BACKENDS = {"CPU", "GPU", "NPU", "TF"}

# Entries waiting for another branch to land on main; each names the missing piece. strict: remove the line when it lands.
PENDING: dict[str, str] = {}
# Failures that depend on the CPU's execution precision (bf16 on AMX/avx512_bf16, f32 elsewhere): not strict.
PENDING_ON_CPU: dict[str, str] = {}


@pytest.fixture(scope="session")
def zoo_kvd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kvd]:
    """One kvd for the whole zoo, with tests/zoo_objects.py as its trusted custom-objects module."""
    extra, env = zoo.kvd_arguments()
    kvd = start_kvd(tmp_path_factory.mktemp("zoo") / "repo", *extra, env=env)
    try:
        yield kvd
    finally:
        kvd.stop()


@pytest.fixture(scope="session")
def zoo_client(zoo_kvd: Kvd) -> Iterator:
    with zoo_kvd.client(timeout=120) as client:
        yield client


@pytest.fixture(scope="session")
def zoo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("zoo-models")


@pytest.fixture(scope="session")
def zoo_runs(request: pytest.FixtureRequest, zoo_client, zoo_dir: Path) -> Iterator[dict[str, Future]]:
    """Every selected entry, built and served two at a time (zoo.submit_all); each test awaits its own.

    With KVSERVE_ZOO_TABLE=PATH the session also writes the compatibility table there (as tests/zoo.py --markdown).
    """
    selected = [item.callspec.params["entry"] for item in request.session.items
                if hasattr(item, "callspec") and isinstance(item.callspec.params.get("entry"), zoo.Entry)]
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="zoo") as pool:
        futures = zoo.submit_all(pool, selected, zoo_client, zoo_dir)
        if table := os.environ.get("KVSERVE_ZOO_TABLE"):
            for future in futures.values():
                future.add_done_callback(lambda _: _write_table(Path(table), futures))
        yield futures
        for future in futures.values():
            future.cancel()


_TABLE_LOCK = threading.Lock()


def _write_table(path: Path, futures: dict[str, Future]) -> None:
    """The table of the entries finished so far, in zoo order (rewritten as each one finishes)."""
    with _TABLE_LOCK:
        done = [f.result() for f in futures.values() if f.done() and not f.cancelled() and f.exception() is None]
        path.write_text(zoo.markdown(done) + "\n")


def _params() -> list:
    params = []
    for entry in zoo.ZOO:
        marks = [pytest.mark.slow] if entry.heavy else []
        if zoo.entry_id(entry) in PENDING:
            marks.append(pytest.mark.xfail(strict=True, reason=PENDING[zoo.entry_id(entry)]))
        elif zoo.entry_id(entry) in PENDING_ON_CPU:
            marks.append(pytest.mark.xfail(strict=False, reason=PENDING_ON_CPU[zoo.entry_id(entry)]))
        params.append(pytest.param(entry, id=zoo.entry_id(entry), marks=marks))
    return params


@pytest.mark.parametrize("entry", _params())
def test_zoo_model(entry: zoo.Entry, zoo_runs: dict[str, Future]) -> None:
    if entry.needs == "custom-objects" and not zoo.kvd_supports("--custom-objects"):
        pytest.fail("kvd has no --custom-objects option (issue 10 item 6: custom objects hook)")
    result = zoo_runs[zoo.entry_id(entry)].result()
    if entry.refuse:
        assert result.outcome == "refused", f"{entry.name} must be refused, got {result}"
        assert result.code not in ("INTERNAL", "UNKNOWN"), result
        assert "\n" not in result.message and "\x1b" not in result.message, repr(result.message)
        assert entry.refuse in result.message, f"the refusal must name {entry.refuse}: {result.message}"
        return
    assert result.outcome == "served", f"{zoo.entry_id(entry)}: {result.outcome}: {result.message}"
    assert result.backend in BACKENDS, result
    assert result.rung and "?" not in result.rung, result
    assert result.max_rel_diff is not None and result.max_rel_diff <= result.tolerance, result
    parity = result.parity
    assert parity.get("passed") is True, f"served without a passing parity check: {parity}"
    if result.backend == "TF":  # the TF fallback is checked like an IR: its own runner against the original
        assert parity.get("backend") == "TF", parity
