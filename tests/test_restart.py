"""kill -9 kvd, start it again on the same repository: every model is back and answers the same; staging
leftovers of interrupted uploads are removed at start-up."""

from __future__ import annotations

import signal

import numpy as np


def test_restart_restores_every_model_and_cleans_staging(kvd_factory, digits, tmp_path):
    repository = tmp_path / "repo"
    kvd = kvd_factory(repository)
    with kvd.client() as client:
        client.upload(digits.paths["h5"], name="a")
        client.upload(digits.paths["keras"], name="b", precision="fp32")
        client.upload(digits.paths["keras"], name="b", precision="fp32")
        before = {name: client.infer(name, digits.x_test[:16]) for name in ("a", "b")}
    kvd.stop(signal.SIGKILL)

    leftover = repository / ".staging" / "upload-interrupted"
    leftover.mkdir()
    (leftover / "source.h5").write_bytes(b"partial")
    half = repository / "a" / "2"  # a version dir without a manifest: an interrupted publish is never served
    half.mkdir()

    kvd = kvd_factory(repository)
    assert not leftover.exists()
    with kvd.client() as client:
        assert client.ready()
        listed = {(m["name"], m["version"], m["state"]): m["reason"] for m in client.list_models()}
        assert set(listed) == {("a", "1", "READY"), ("a", "2", "UNAVAILABLE"), ("b", "1", "UNAVAILABLE"), ("b", "2", "READY")}
        assert "no manifest.json" in listed[("a", "2", "UNAVAILABLE")]  # listed with its reason, never served
        for name, outputs in before.items():
            assert client.model_ready(name)
            after = client.infer(name, digits.x_test[:16])
            np.testing.assert_array_equal(after["probabilities"], outputs["probabilities"])
        assert client.metadata("a")["versions"] == ["1"]


def test_graceful_stop_exits_zero(kvd_factory):
    kvd = kvd_factory()
    assert kvd.stop(signal.SIGTERM) == 0
