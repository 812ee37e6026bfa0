"""Unit tests of the model lifecycle pieces that need no model: version policy, config file parsing and its
watcher, the persisted version counter, damage reports, inheritance, warm-up inputs, orphan-log cleanup."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from kvserve.plugins.types import TensorSpec
from kvserve.server.errors import InvalidArgument
from kvserve.server.models.config import Batching, ConfigWatcher, ServerConfig, parse_config
from kvserve.server.models.inherit import inherit
from kvserve.server.models.policy import VersionPolicy, parse_policy
from kvserve.server.models.repository import MANIFEST, Damaged, Repository
from kvserve.server.models.warmup import warmup_inputs
from kvserve.server.uploads import child


def stage(repo: Repository, files: dict[str, bytes] | None = None) -> Path:
    staging = repo.new_staging()
    for rel, data in (files or {"source.h5": b"h5", "model.xml": b"<xml/>", "model.bin": b"\0" * 16}).items():
        (staging / rel).write_bytes(data)
    return staging


def manifest(**extra) -> dict:
    return {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
            "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}], **extra}


# --- version policy ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("text,stored,selected", [
    ("latest 1", [1, 2, 5], [5]), ("latest 2", [1, 2, 5], [2, 5]), ("all", [1, 2, 5], [1, 2, 5]),
    ("specific 1,5", [1, 2, 5], [1, 5]), ("specific 7", [1, 2], []), ({"latest": 3}, [4], [4]),
    ({"specific": [2]}, [1, 2], [2]), ({"all": True}, [3, 1], [1, 3]),
])
def test_policy_selects(text, stored, selected):
    assert parse_policy(text).select(stored) == selected


@pytest.mark.parametrize("bad", ["latest 0", "latest", "newest 2", "specific", "specific x", {"latest": "2"}, 3, {"all": False}])
def test_policy_refuses_with_the_forms(bad):
    with pytest.raises(InvalidArgument, match="latest N"):
        parse_policy(bad)


# --- config file ------------------------------------------------------------------------------------------

GOOD = """
[defaults]
version_policy = "latest 2"
warmup = 1
on_demand_versions = 1

[models.digits]
pinned = 3
devices = ["cpu"]
performance_hint = "latency"
batching = {max_batch = 8, max_delay_ms = 5}
"""


def test_config_parses_and_layers_model_over_defaults_over_built_ins():
    config = parse_config(GOOD)
    digits = config.for_model("digits")
    assert digits.version_policy == VersionPolicy("latest", 2)
    assert (digits.pinned, digits.devices, digits.performance_hint, digits.warmup) == (3, ("CPU",), "LATENCY", 1)
    assert digits.batching == Batching(8, 5.0)
    other = config.for_model("other")
    assert (other.pinned, other.batching, other.warmup) == (None, None, 1)
    assert config.on_demand_versions == 1
    assert ServerConfig().for_model("x").version_policy == VersionPolicy("latest", 1)  # built-in default
    assert ServerConfig().for_model("x").warmup > 0  # warm-up is on by default
    shown = config.to_dict()
    assert shown["models"]["digits"]["batching"] == {"max_batch": 8, "max_delay_ms": 5.0}


@pytest.mark.parametrize("text,message", [
    ("[models.m]\npinned = 0", "pinned must be a version number"),
    ("[models.m]\npined = 1", "unknown key.*pined"),
    ("[models.'a..b']\nwarmup = 1", "not a valid model name"),
    ("[models.m]\nbatching = {max_batch = 0}", "max_batch must be"),
    ("[models.m]\nperformance_hint = 'FAST'", "THROUGHPUT"),
    ("[defaults]\npinned = 2", "unknown key.*pinned"),
    ("[model.m]\nwarmup = 1", "unknown top-level"),
    ("[models.m\nwarmup = 1", "not valid TOML"),
])
def test_config_errors_name_the_key(text, message):
    with pytest.raises(InvalidArgument, match=message):
        parse_config(text)


def test_config_watcher_applies_changes_and_keeps_the_last_good_one(tmp_path, caplog):
    path = tmp_path / "kvd.toml"
    path.write_text("[models.m]\npinned = 1\n")
    applied: list[ServerConfig] = []
    watcher = ConfigWatcher(path, applied.append, poll_s=3600)
    assert watcher.load_initial().for_model("m").pinned == 1
    assert watcher.check() is False  # unchanged
    path.write_text("[models.m]\npinned = 2\n")
    assert watcher.check() is True and applied[-1].for_model("m").pinned == 2
    path.write_text("[models.m\npinned = 3\n")  # a syntax error
    assert watcher.check() is False
    assert len(applied) == 1 and "not valid TOML" in watcher.last_error
    assert "keeping the last good one" in caplog.text


# --- repository: counter, damage ----------------------------------------------------------------------------


def test_version_numbers_are_never_reused(tmp_path):
    repo = Repository(tmp_path / "repo")
    assert [repo.publish(stage(repo), "m", manifest()) for _ in range(2)] == [1, 2]
    repo.delete("m", 2)
    assert repo.publish(stage(repo), "m", manifest()) == 3
    repo.delete("m")
    again = Repository(tmp_path / "repo")  # a restart reads the persisted counter
    assert again.publish(stage(again), "m", manifest()) == 4


def test_counter_lost_still_counts_past_existing_dirs(tmp_path):
    repo = Repository(tmp_path / "repo")
    repo.publish(stage(repo), "m", manifest())
    (repo.root / "m" / ".model.json").unlink()
    assert repo.publish(stage(repo), "m", manifest()) == 2


def test_manifest_records_digests_and_verify_finds_flipped_bytes(tmp_path):
    repo = Repository(tmp_path / "repo")
    repo.publish(stage(repo), "m", manifest())
    good = repo.servable_manifest("m", 1)
    assert set(good["files"]) == {"source.h5", "model.xml", "model.bin"}
    path = repo.root / "m" / "1" / "model.bin"
    data = bytearray(path.read_bytes())
    data[3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(Damaged, match="model.bin changed"):
        repo.servable_manifest("m", 1)
    path.unlink()
    with pytest.raises(Damaged, match="model.bin is missing"):
        repo.servable_manifest("m", 1)


def test_truncated_manifest_is_damaged_with_the_cause(tmp_path):
    repo = Repository(tmp_path / "repo")
    repo.publish(stage(repo), "m", manifest())
    path = repo.root / "m" / "1" / MANIFEST
    path.write_text(path.read_text()[:40])
    with pytest.raises(Damaged, match="truncated or not JSON"):
        repo.read_manifest("m", 1)


def test_problems_name_each_skipped_entry(tmp_path):
    repo = Repository(tmp_path / "repo")
    repo.publish(stage(repo), "good", manifest())
    (repo.root / "a..b" / "1").mkdir(parents=True)
    (repo.root / "stray.txt").write_text("x")
    (repo.root / "good" / "notes").mkdir()
    (repo.root / "half" / "1").mkdir(parents=True)
    problems = {(p.name, p.version): p.reason for p in repo.problems()}
    assert "not a model" in problems[("a..b", "")]
    assert "stray file" in problems[("stray.txt", "")]
    assert "not a version" in problems[("good", "notes")]
    assert "no manifest.json" in problems[("half", "1")]
    assert repo.names() == ["good"]


def test_unreadable_version_is_reported_not_fatal(tmp_path):
    """chmod 000 only bites without CAP_DAC_OVERRIDE: run the check in a child that drops it (root or not)."""
    repo = Repository(tmp_path / "repo")
    repo.publish(stage(repo), "m", manifest())
    repo.publish(stage(repo), "m", manifest())
    (repo.root / "m" / "2").chmod(0)
    code = ("import sys; from kvserve.server.models.repository import Repository; r = Repository(sys.argv[1]); "
            "print(r.names(), r.versions('m'), [(p.version, p.reason) for p in r.problems()])")
    try:
        out = subprocess.run(["setpriv", "--bounding-set=-dac_override,-dac_read_search",
                              "--inh-caps=-dac_override,-dac_read_search", sys.executable, "-c", code, str(repo.root)],
                             capture_output=True, text=True, timeout=60)
    finally:
        (repo.root / "m" / "2").chmod(0o755)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("['m'] [1] [('2', ")
    assert "skipped: the version directory cannot be read (" in out.stdout
    assert "Permission denied" in out.stdout


def test_delete_removes_the_versions_compiled_cache(tmp_path):
    repo = Repository(tmp_path / "repo")
    staging = stage(repo)
    (repo.staging_cache(staging)).mkdir(parents=True)
    (repo.staging_cache(staging) / "blob.blob").write_bytes(b"x")
    version = repo.publish(staging, "m", manifest())
    assert (repo.version_cache("m", version) / "blob.blob").is_file()
    failed = stage(repo)
    repo.staging_cache(failed).mkdir(parents=True)
    repo.discard_staging(failed)
    assert not repo.staging_cache(failed).exists() and not failed.exists()
    (repo.cache_dir / "old-flat.blob").write_bytes(b"x")  # an earlier layout, or a kill -9 leftover
    (repo.cache_dir / "gone" / "3").mkdir(parents=True)
    assert sorted(repo.clean_cache()) == [".staging", "gone/3", "old-flat.blob"]
    repo.delete("m", version)
    assert not repo.version_cache("m", version).exists()


def test_orphan_child_logs_of_dead_kvd_are_removed(tmp_path, monkeypatch):
    monkeypatch.setattr(child.tempfile, "gettempdir", lambda: str(tmp_path))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = tmp_path / f"kvserve-conversion-{dead.pid}-abc.log"
    mine = tmp_path / f"kvserve-conversion-{os.getpid()}-def.log"
    orphan.write_text("x")
    mine.write_text("x")
    assert child.remove_orphan_logs() == [orphan.name]
    assert mine.exists() and not orphan.exists()


# --- inheritance and warm-up ------------------------------------------------------------------------------


def test_reupload_inherits_what_it_does_not_say(tmp_path):
    repo = Repository(tmp_path / "repo")
    repo.publish(stage(repo), "m", manifest(labels=["a", "b", "c"], devices=["TF"], performance_hint="LATENCY",
                                            preprocess={"mode": "unit", "resize": "nearest", "center_crop": False, "source": "user"},
                                            batching={"max_batch": 4, "max_delay_ms": 1.0}))
    spec = SimpleNamespace(name="m", devices=[], performance_hint="", preprocess=None, labels=b"")
    found = inherit(repo, spec)
    assert spec.devices == ["TF"] and spec.performance_hint == "LATENCY"
    assert found.preprocess == {"mode": "unit", "resize": "nearest", "center_crop": False}
    new = manifest()
    found.apply_labels(new)
    found.apply_rest(new)
    assert new["labels"] == ["a", "b", "c"] and new["batching"] == {"max_batch": 4, "max_delay_ms": 1.0}
    assert found.summary().startswith("inherited from version 1: devices TF, performance hint LATENCY, preprocessing unit, labels (3)")
    said = SimpleNamespace(name="m", devices=["CPU"], performance_hint="THROUGHPUT", preprocess={"mode": "none"}, labels=b"x")
    found = inherit(repo, said)
    assert said.devices == ["CPU"] and found.preprocess is None and found.labels is None
    wider = manifest()
    wider["outputs"][0]["shape"] = [-1, 5]
    found = inherit(repo, SimpleNamespace(name="m", devices=[], performance_hint="", preprocess=None, labels=b""))
    found.apply_labels(wider)
    assert "labels" not in wider and "not inherited: labels (3 labels given" in found.summary()


def test_warmup_inputs_use_kept_samples_else_zeros(tmp_path):
    spec = TensorSpec("x", "FP32", (-1, 4))
    zeros = warmup_inputs(tmp_path, [spec])
    assert zeros["x"].shape == (1, 4) and not zeros["x"].any()
    (tmp_path / "samples").mkdir()
    np.save(tmp_path / "samples" / "inputs.npy", np.full((3, 4), 7.0))
    assert warmup_inputs(tmp_path, [spec])["x"].tolist() == [[7.0] * 4]
    assert warmup_inputs(tmp_path, [TensorSpec("s", "BYTES", (-1,))]) is None



def test_a_manifest_with_malformed_tensors_is_listed_damaged(tmp_path):
    from kvserve.plugins.manager import load_plugins
    from kvserve.server.errors import FailedPrecondition
    from kvserve.server.models.manager import ModelManager
    from kvserve.server.settings import Settings

    repo = Repository(tmp_path / "repo")
    repo.publish(stage(repo), "m", {"inputs": [{"name": "x", "datatype": "FP32", "shape": ["?"]}], "outputs": []})
    manager = ModelManager(repo, load_plugins(), Settings(repository=repo.root))
    manager.load_all()  # never raises
    row = next(e for e in manager.entries() if e.name == "m")
    assert row.state == "UNAVAILABLE" and "a tensor's name, datatype or shape is malformed" in row.reason
    with pytest.raises(FailedPrecondition, match="malformed"):
        manager.load("m", 1)


def test_warmup_inputs_give_free_dims_the_size_parity_proved():
    """A fully-convolutional model ((None, None, 3) into a valid 3x3 conv) cannot run on 1x1: free dims get the
    parity check's size, the batch dim 1, a fixed batch its own size."""
    from kvserve.server.uploads.parity_inputs import FREE_DIM

    feeds = warmup_inputs(Path("/nonexistent"), [TensorSpec("image", "FP32", (-1, -1, -1, 3)), TensorSpec("n", "INT32", (4, -1))])
    assert feeds["image"].shape == (1, FREE_DIM, FREE_DIM, 3) and feeds["n"].shape == (4, FREE_DIM)


def test_error_line_names_what_went_wrong_not_where():
    from kvserve.proto.echo import error_line

    openvino = "Exception from src/inference/src/cpp/infer_request.cpp:224:\nCheck 'x' failed at y:\n[CPU] Convolution: bad shape"
    assert error_line(openvino) == "[CPU] Convolution: bad shape"
    tensorflow = ("Graph execution error:\n\nDetected at node conv defined at (most recent call last):\n  File \"a.py\", line 3\n"
                  "    model(x)\nComputed output size would be negative: -1\n\t [[{{node conv}}]] [Op:__inference_f]")
    assert error_line(tensorflow) == "Computed output size would be negative: -1"
    assert error_line(ValueError("one\u2028two")) == "one\\u2028two"
