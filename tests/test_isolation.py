"""Issue 14 item 7: untrusted model code runs in a worker child per model version, never inside kvd.

A TF-served model answers through its worker (kvd itself never maps TensorFlow); kill -9 of the worker costs
that model a restart (UNAVAILABLE meanwhile, then it answers again) while another model keeps answering; a
worker that keeps dying leaves the model not ready with the reason; the worker has kvd's child memory limit
and a raised oom_score_adj, and a call it cannot hold in memory answers RESOURCE_EXHAUSTED; a SavedModel that
needs TF is served only with --allow-unsafe-deserialization.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from conftest import Kvd, start_kvd
from opsutil import copy_model
from test_upload_formats import tensorflow_loaded

CHILD_MEMORY_MB = 6144  # the module kvd's --child-memory-mb: roomy enough for a converter child


# --- models -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Small models built here (weights=None style, seeded): a dense net, a string-output net, a SavedModel with
    lgamma (which OpenVINO cannot convert, so only TF can serve it)."""
    import keras
    import tensorflow as tf

    out = tmp_path_factory.mktemp("isolation-models")
    keras.utils.set_random_seed(0)
    features = keras.Input((6,), name="features")
    dense = keras.Model(features, keras.layers.Dense(3, activation="softmax", name="scores")(
        keras.layers.Dense(16, activation="relu")(features)))
    dense.save(out / "dense.keras")
    ids = keras.Input(shape=(3,), dtype="int64", name="ids")
    words = keras.Model(ids, keras.layers.StringLookup(vocabulary=["zero", "one", "two"], invert=True, name="words")(ids))
    words.save(out / "words.keras")

    class LogGamma(keras.layers.Layer):
        def call(self, x):
            return tf.math.lgamma(x + 1.0)

    inputs = keras.Input((6,), name="features")
    lgamma = keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="scores")(LogGamma()(inputs)))
    lgamma.export(str(out / "lgamma_model"), verbose=False)
    archive = Path(shutil.make_archive(str(out / "lgamma_model"), "zip", root_dir=out, base_dir="lgamma_model"))
    target = out / "written-by-the-graph"

    class WriteWhenLarge(keras.layers.Layer):  # a graph with a WriteFile op, run only for inputs summing over 1000
        def call(self, x):
            def write():
                tf.io.write_file(str(target), tf.strings.as_string(tf.reduce_sum(x)))
                return tf.constant(0)

            tf.cond(tf.reduce_sum(x) > 1000.0, write, lambda: tf.constant(0))
            return x * 2.0

    inputs = keras.Input((6,), name="features")
    keras.Model(inputs, WriteWhenLarge(name="doubled")(inputs)).export(str(out / "writer_model"), verbose=False)
    writer = Path(shutil.make_archive(str(out / "writer_model"), "zip", root_dir=out, base_dir="writer_model"))
    x = np.random.default_rng(1).random((64, 6), dtype=np.float32)
    return {"dense": out / "dense.keras", "words": out / "words.keras", "lgamma": archive, "x": x, "writer": writer, "target": target,
            "dense_expected": np.asarray(dense(x, training=False)), "lgamma_expected": np.asarray(lgamma(x, training=False))}


@pytest.fixture(scope="module")
def iso_kvd(tmp_path_factory: pytest.TempPathFactory, models: dict) -> Kvd:
    """kvd with the opt-in and a child memory limit, serving: 'tf' (dense on TF), 'cpu' (dense on OpenVINO),
    'words' (strings out, TF), 'lgamma' (a SavedModel only TF serves), 'doomed' (dense on TF, to be killed),
    'writer' (a SavedModel whose graph writes a file outside its worker's temp directory, on TF)."""
    kvd = start_kvd(tmp_path_factory.mktemp("isolation") / "repo", "--allow-unsafe-deserialization",
                    "--child-memory-mb", str(CHILD_MEMORY_MB))
    try:
        with kvd.client(timeout=600) as client:
            assert client.upload(models["dense"], name="tf", devices=["TF"])["served_by"]["backend"] == "TF"
            assert client.upload(models["dense"], name="cpu", devices=["CPU"])["served_by"]["backend"] == "CPU"
            assert client.upload(models["words"], name="words")["served_by"]["backend"] == "TF"
            assert client.upload(models["lgamma"], name="lgamma")["served_by"]["backend"] == "TF"
            assert client.upload(models["dense"], name="doomed", devices=["TF"])["served_by"]["backend"] == "TF"
            assert client.upload(models["writer"], name="writer", devices=["TF"])["served_by"]["backend"] == "TF"
        yield kvd
    finally:
        kvd.kill()


# --- helpers ------------------------------------------------------------------------------------------------
def workers(kvd_pid: int) -> dict[str, int]:
    """kvd's worker children by model name (from their command lines)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == kvd_pid and b"kvserve.server.models.worker_child" in argv:
            found[argv[argv.index(b"--model") + 1].decode()] = int(entry.name)
    return found


def wait_for(condition, timeout: float = 240, step: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout} s waiting for {condition}")


def new_worker(kvd: Kvd, name: str, old: int | None = None) -> int:
    return wait_for(lambda: (pid := workers(kvd.process.pid).get(name)) and pid != old and pid)


def answers(client, name: str, x: np.ndarray) -> bool:
    try:
        client.infer(name, x)
        return True
    except grpc.RpcError:
        return False


# --- tests --------------------------------------------------------------------------------------------------
def test_tf_model_answers_from_its_worker_and_kvd_never_maps_tensorflow(iso_kvd: Kvd, models: dict) -> None:
    with iso_kvd.client() as client:
        got = client.infer("tf", models["x"])["scores"]
        words = client.infer("words", {"ids": np.array([[1, 2, 3], [0, 1, 1]], dtype=np.int64)})["words"]
        assert client.describe("tf")["device"] == "TF"
    np.testing.assert_allclose(got, models["dense_expected"], atol=1e-6)
    assert words.tolist() == [[b"zero", b"one", b"two"], [b"[UNK]", b"zero", b"zero"]]  # BYTES out through the pipe
    running = workers(iso_kvd.process.pid)
    assert {"tf", "words", "lgamma", "doomed"} <= set(running) and "cpu" not in running, running
    assert not tensorflow_loaded(iso_kvd.process.pid), "TensorFlow was loaded into kvd itself"
    assert all(tensorflow_loaded(pid) for pid in running.values())


def test_worker_has_the_child_memory_limit_and_a_raised_oom_score(iso_kvd: Kvd) -> None:
    pid = workers(iso_kvd.process.pid)["tf"]
    limits = Path(f"/proc/{pid}/limits").read_text()
    row = next(line for line in limits.splitlines() if line.startswith("Max address space"))
    assert row.split()[3:5] == [str(CHILD_MEMORY_MB << 20)] * 2, row
    assert Path(f"/proc/{pid}/oom_score_adj").read_text().strip() == "500"
    assert Path(f"/proc/{iso_kvd.process.pid}/oom_score_adj").read_text().strip() != "500"


def test_concurrent_calls_each_get_their_own_rows(iso_kvd: Kvd, models: dict) -> None:
    x, expected = models["x"], models["dense_expected"]
    errors: list[str] = []

    def caller(index: int) -> None:
        with iso_kvd.client() as client:
            for round_ in range(12):
                rows = slice((index * 7 + round_ * 3) % 56, (index * 7 + round_ * 3) % 56 + 1 + (index + round_) % 8)
                got = client.infer("tf", x[rows])["scores"]
                if got.shape != expected[rows].shape or not np.allclose(got, expected[rows], atol=1e-6):
                    errors.append(f"caller {index} round {round_}: rows {rows} answered wrong")

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors[:3]


def test_killed_worker_costs_that_model_a_restart_only(iso_kvd: Kvd, models: dict) -> None:
    x = models["x"][:4]
    other_failures: list[str] = []
    other_calls = 0
    stop = threading.Event()

    def keep_calling_the_other_model() -> None:
        nonlocal other_calls
        with iso_kvd.client() as client:
            while not stop.is_set():
                try:
                    client.infer("cpu", x)
                    other_calls += 1
                except grpc.RpcError as error:
                    other_failures.append(f"{error.code().name}: {error.details()}")
                time.sleep(0.02)

    other = threading.Thread(target=keep_calling_the_other_model)
    other.start()
    try:
        with iso_kvd.client(timeout=60) as client:
            old = workers(iso_kvd.process.pid)["tf"]
            assert answers(client, "tf", x)
            os.kill(old, signal.SIGKILL)
            with pytest.raises(grpc.RpcError) as caught:
                for _ in range(200):  # the calls right after the kill (in flight or during the restart)
                    client.infer("tf", x)
                    time.sleep(0.01)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "TF worker exited (signal 9); restarting" in caught.value.details(), caught.value.details()
            assert "\n" not in caught.value.details()
            assert not client.model_ready("tf")
            assert "restarting" in client.describe("tf")["reason"]
            new_worker(iso_kvd, "tf", old)
            wait_for(lambda: answers(client, "tf", x))
            np.testing.assert_allclose(client.infer("tf", models["x"])["scores"], models["dense_expected"], atol=1e-6)
            assert client.model_ready("tf")
            assert "restarted after it exited (signal 9)" in client.describe("tf")["reason"]
    finally:
        stop.set()
        other.join()
    assert not other_failures and other_calls > 10, (other_calls, other_failures[:3])
    assert iso_kvd.process.poll() is None
    assert "model tf's TF worker exited (signal 9); restarting" in iso_kvd.log()


def test_worker_that_keeps_dying_leaves_the_model_not_ready_with_the_reason(iso_kvd: Kvd, models: dict) -> None:
    x = models["x"][:2]
    with iso_kvd.client(timeout=60) as client:
        assert answers(client, "doomed", x)
        killed: set[int] = set()

        def kill_and_check() -> str | None:
            pid = workers(iso_kvd.process.pid).get("doomed")
            if pid is not None and pid not in killed:
                killed.add(pid)
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            reason = client.describe("doomed")["reason"]
            return reason if "not restarted again" in reason else None

        reason = wait_for(kill_and_check, timeout=300, step=0.05)
        assert "model doomed's TF worker exited (signal 9)" in reason and "kvctl load doomed" in reason, reason
        assert not client.model_ready("doomed")
        with pytest.raises(grpc.RpcError) as caught:
            client.infer("doomed", x)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE and "not restarted again" in caught.value.details()
        time.sleep(1)
        assert "doomed" not in workers(iso_kvd.process.pid), "a worker that gave up is not started again by itself"
        assert answers(client, "tf", x), "other TF-served models keep serving"
        client.load("doomed")  # the operator's retry: a fresh worker
        assert client.model_ready("doomed") and answers(client, "doomed", x)


def test_worker_cannot_write_outside_its_temp_directory(iso_kvd: Kvd, models: dict) -> None:
    """Landlock (where the kernel has it): a graph's WriteFile outside the worker's private temp dir fails that call."""
    if "filesystem confined: Landlock" not in iso_kvd.log():
        pytest.skip("this kernel cannot confine the worker (Landlock unavailable): " +
                    next((line for line in iso_kvd.log().splitlines() if "not confined" in line), "no reason logged"))
    target = models["target"]
    with iso_kvd.client() as client:
        small = models["x"][:2]
        np.testing.assert_allclose(next(iter(client.infer("writer", small).values())), small * 2)
        target.unlink(missing_ok=True)  # the upload's parity run (converter child) may have written it
        with pytest.raises(grpc.RpcError) as caught:
            client.infer("writer", np.full((1, 6), 500.0, np.float32))
        assert caught.value.code() == grpc.StatusCode.INTERNAL
        assert not target.exists(), "the graph wrote outside its worker's temp directory"
        np.testing.assert_allclose(next(iter(client.infer("writer", small).values())), small * 2)  # same worker, still serving


def test_savedmodel_on_tf_needs_the_opt_in(iso_kvd: Kvd, models: dict, tmp_path: Path) -> None:
    with iso_kvd.client() as client:  # with the opt-in: served by TF, in its worker, and right
        described = client.describe("lgamma")
        got = next(iter(client.infer("lgamma", models["x"]).values()))
    assert described["device"] == "TF" and "Lgamma" in described["manifest"]["conversion_error"]
    np.testing.assert_allclose(got, models["lgamma_expected"], atol=1e-6)
    # a repository copied from elsewhere: kvd without the opt-in does not serve the stored TF SavedModel
    copy_model(iso_kvd.repository, "lgamma", tmp_path / "repo")
    copy_model(iso_kvd.repository, "tf", tmp_path / "repo")
    plain = start_kvd(tmp_path / "repo")
    try:
        with plain.client(timeout=600) as client:
            assert client.model_ready("tf"), "a Keras model served by TF needs no opt-in"
            assert not client.model_ready("lgamma")
            reason = client.describe("lgamma")["reason"]
            assert "TF refused it" in reason and "--allow-unsafe-deserialization" in reason and "ReadFile" in reason, reason
            assert "lgamma" not in workers(plain.process.pid), "refused before any worker was started"
            with pytest.raises(grpc.RpcError) as caught:
                client.upload(models["lgamma"], name="lgamma-new")
        details = caught.value.details()
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "Lgamma" in details and "--allow-unsafe-deserialization" in details and "\n" not in details, details
    finally:
        plain.kill()


def test_a_call_the_worker_cannot_hold_answers_resource_exhausted(iso_kvd: Kvd, models: dict, tmp_path: Path) -> None:
    """A worker limited to what it uses after loading plus a little: a 240 MB call cannot be held, that call answers
    RESOURCE_EXHAUSTED, and the worker (same pid) keeps answering small calls."""
    pid = workers(iso_kvd.process.pid)["tf"]
    peak_kb = int(next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                       if line.startswith("VmPeak")).split()[1])
    limit_mb = peak_kb // 1024 + 160
    copy_model(iso_kvd.repository, "tf", tmp_path / "repo")
    tight = start_kvd(tmp_path / "repo", "--child-memory-mb", str(limit_mb), "--max-batch-size", str(1 << 24))
    try:
        with tight.client(timeout=120) as client:
            assert client.model_ready("tf")
            worker = workers(tight.process.pid)["tf"]
            rows = (240 << 20) // (6 * 4)
            with pytest.raises(grpc.RpcError) as caught:
                client.infer("tf", np.ones((rows, 6), np.float32))
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, caught.value.details()
            assert "ran out of memory" in caught.value.details() and f"--child-memory-mb {limit_mb}" in caught.value.details()
            np.testing.assert_allclose(client.infer("tf", models["x"])["scores"], models["dense_expected"], atol=1e-6)
            assert workers(tight.process.pid)["tf"] == worker
    finally:
        tight.kill()
