"""Issue 16: what a newcomer trips over. Exit codes as documented, one line per error and never a traceback,
kvserve exception classes from the client, --version, completion, confirmations, stages with elapsed time."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest

KVCTL = str(Path(sys.executable).parent / "kvctl")
KVD = str(Path(sys.executable).parent / "kvd")


def kvctl(*args: str, server: str | None = None, stdin: str | None = None, env: dict[str, str] | None = None,
          timeout: float = 300) -> subprocess.CompletedProcess[str]:
    prefix = ["--server", server] if server else []
    return subprocess.run([KVCTL, *prefix, *args], capture_output=True, text=True, timeout=timeout, input=stdin,
                          env={**os.environ, "COLUMNS": "200", **(env or {})})


def assert_one_clean_line(done: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr + done.stdout
    for word in words:
        assert word in done.stderr, (word, done.stderr)


@pytest.fixture(scope="module")
def png(served_digits, digits, tmp_path_factory) -> Path:
    from digits import write_pngs

    return write_pngs(digits.x_test, digits.y_test, tmp_path_factory.mktemp("pngs"), count=1)[0][0]


# --- the Python client's exceptions ----------------------------------------------------------------------------
def test_client_raises_kvserve_exceptions_with_status_and_message(served_digits):
    from kvserve.client import Client, InvalidArgument, KvserveError, NotFound, Unreachable

    with served_digits.client() as client:
        with pytest.raises(NotFound) as missing:
            client.infer("no-such-model", np.zeros((1, 8, 8, 1), np.float32))
        with pytest.raises(InvalidArgument) as bad_name:
            client.upload(__file__, name="bad/name")  # a streaming call
    for caught in (missing.value, bad_name.value):
        assert isinstance(caught, KvserveError) and isinstance(caught, grpc.RpcError)
        assert not type(caught).__module__.startswith("grpc")
        assert caught.message and caught.details() == caught.message
    assert missing.value.status == "NOT_FOUND" and missing.value.code() == grpc.StatusCode.NOT_FOUND
    assert "no-such-model" in missing.value.message
    assert bad_name.value.status == "INVALID_ARGUMENT" and "invalid model name" in bad_name.value.message

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with Client(f"127.0.0.1:{port}", timeout=10) as nobody, pytest.raises(Unreachable) as unreachable:
        nobody.list_models()
    assert unreachable.value.status == "UNAVAILABLE"


def test_client_classify_k0_and_python_lists(served_digits, digits):
    from kvserve.client import InvalidArgument

    rows = digits.x_test[:2]
    with served_digits.client() as client:
        with pytest.raises(InvalidArgument, match="k must be"):
            client.classify("digits", rows, k=0)
        as_list = rows.astype(np.float64).tolist()  # what a user types: float64 lists
        from_list = client.infer("digits", as_list)["probabilities"]
        from_array = client.infer("digits", rows)["probabilities"]
        top = client.classify("digits", {"image": rows.astype(np.float64)}, k=1)
    np.testing.assert_allclose(from_list, from_array, rtol=1e-6)
    assert [row[0].index for row in top] == list(from_array.argmax(1))


def test_client_address_parsing():
    from kvserve.client import Client, InvalidAddress
    from kvserve.client.client import parse_address

    assert parse_address("127.0.0.1") == "127.0.0.1:8500"  # not grpc's silent 443
    assert parse_address("localhost:9000") == "localhost:9000"
    assert parse_address("::1") == "[::1]:8500"
    for bad in ("http://127.0.0.1:8500", "127.0.0.1:http", "127.0.0.1:70000"):
        with pytest.raises(InvalidAddress):
            Client(bad)
    with pytest.raises(InvalidAddress):
        parse_address(" ")


# --- kvctl exit codes ------------------------------------------------------------------------------------------
def test_usage_errors_exit_2(served_digits, png, tmp_path):
    server = served_digits.address
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    assert_one_clean_line(kvctl("infer", "-m", "digits", "--top", "0", str(png), server=server), 2, "--top")
    assert_one_clean_line(kvctl("infer", "-m", "digits", "--batch-size", "0", str(png), server=server), 2, "--batch-size")
    assert_one_clean_line(kvctl("infer", "-m", "digits", str(text), server=server), 2, "unknown input type")
    assert_one_clean_line(kvctl("configure", "digits", server=server), 2, "nothing to change")
    assert_one_clean_line(kvctl("benchmark", "-m", "digits", "--iterations", "0", server=server), 2, "--iterations")


def test_unreachable_exits_4(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert_one_clean_line(kvctl("list", server=f"http://127.0.0.1:{port}"), 4, "not a URL", f"127.0.0.1:{port}")
    assert_one_clean_line(kvctl("list", server="no-such-host.invalid:8500"), 4, "cannot reach kvd")
    assert_one_clean_line(kvctl("list", server=f"127.0.0.1:{port}"), 4, "cannot reach kvd", f"127.0.0.1:{port}")
    bare = kvctl("list", server="127.0.0.1", timeout=120)
    assert "Traceback" not in bare.stderr and ":443" not in bare.stderr
    assert bare.returncode == 0 or "127.0.0.1:8500" in bare.stderr


def test_server_errors_exit_1_and_partial_3(served_digits, png):
    server = served_digits.address
    assert_one_clean_line(kvctl("describe", "no-such-model", server=server), 1, "not found", "[NOT_FOUND]")
    done = kvctl("infer", "-m", "digits", "--json", str(png), "missing.png", server=server)
    assert done.returncode == 3 and "Traceback" not in done.stderr
    answer = json.loads(done.stdout)
    assert [r["input"] for r in answer["results"]] == [str(png)]
    assert answer["failed"] == [{"input": "missing.png", "error": "missing.png: no such file"}]


def test_kvd_on_a_busy_port_says_so_in_one_line(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run([KVD, "--repository", str(tmp_path / "repo"), "--address", f"127.0.0.1:{port}",
                               "--metrics-address", "", "--http-address", ""], capture_output=True, text=True, timeout=180)
    if "unrecognized arguments: --http-address" in done.stderr:  # before the HTTP door landed
        done = subprocess.run([KVD, "--repository", str(tmp_path / "repo"), "--address", f"127.0.0.1:{port}",
                               "--metrics-address", ""], capture_output=True, text=True, timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode == 2 and "Traceback" not in output
    assert f"cannot listen on 127.0.0.1:{port}" in output and len(output.strip().splitlines()) == 1


def test_versions():
    from importlib.metadata import version

    assert kvctl("--version").stdout.strip() == f"kvctl {version('kvserve')}"
    done = subprocess.run([KVD, "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.startswith("kvd ")


# --- list, delete, completion, upload stages ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def two_versions(served_digits, digits) -> str:
    with served_digits.client() as client:
        client.upload(digits.paths["h5"], name="twice")
        client.upload(digits.paths["h5"], name="twice")
    return "twice"


def test_list_shows_older_versions_as_stored(served_digits, two_versions):
    done = kvctl("list", server=served_digits.address)
    assert done.returncode == 0
    lines = {tuple(re.split(r"\s*│\s*", line.strip("│ "))[:3]) for line in done.stdout.splitlines() if line.startswith("│")}
    assert ("twice", "1", "stored") in lines and ("twice", "2", "READY") in lines
    assert not [line for line in lines if line[0] == "twice" and line[2] == "UNAVAILABLE"]


def test_completion_offers_model_names_from_the_server(served_digits, two_versions):
    env = {"_KVCTL_COMPLETE": "bash_complete", "COMP_WORDS": f"kvctl --server {served_digits.address} describe tw", "COMP_CWORD": "4"}
    done = subprocess.run([KVCTL], capture_output=True, text=True, timeout=60, env={**os.environ, **env})
    assert done.returncode == 0 and "plain,twice" in done.stdout.split(), done
    env["COMP_WORDS"] = f"kvctl --server {served_digits.address} infer --model dig"
    done = subprocess.run([KVCTL], capture_output=True, text=True, timeout=60, env={**os.environ, **env, "COMP_CWORD": "5"})
    assert {"plain,digits", "plain,digits32"} <= set(done.stdout.split()), done


def test_delete_all_versions_asks_first(served_digits, digits, two_versions):
    pexpect = pytest.importorskip("pexpect", reason="pexpect drives kvctl on a terminal (pip install pexpect)")
    server = served_digits.address
    refused = kvctl("delete", "twice", server=server, stdin="")  # no terminal, no --yes: refuse, delete nothing
    assert_one_clean_line(refused, 2, "--yes", "twice:VERSION")
    child = pexpect.spawn(KVCTL, ["--server", server, "delete", "twice"], encoding="utf-8", timeout=60)
    child.expect(r"delete every version of 'twice' \(1, 2\)\? \[y/N\]")
    child.sendline("n")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 1 and "nothing deleted" in child.before
    with served_digits.client() as client:
        assert {m["version"] for m in client.list_models() if m["name"] == "twice"} == {"1", "2"}
    child = pexpect.spawn(KVCTL, ["--server", server, "delete", "twice"], encoding="utf-8", timeout=60)
    child.expect(r"\[y/N\]")
    child.sendline("y")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0 and "deleted twice versions 1, 2" in child.before
    with served_digits.client() as client:
        client.upload(digits.paths["h5"], name="twice-again")
    done = kvctl("delete", "twice-again", "--yes", server=server)
    assert done.returncode == 0 and "deleted twice-again version 1" in done.stdout


def test_upload_shows_stages_with_elapsed_time_and_no_bar_when_refused(served_digits, digits):
    done = kvctl("upload", str(digits.paths["h5"]), "--name", "staged", server=served_digits.address)
    assert done.returncode == 0, done.stderr
    for stage in ("receiving", "converting", "verifying", "loading"):
        assert re.search(rf"✓ {stage}\b.*\d+:\d\d:\d\d", done.stderr), (stage, done.stderr)
    refused = kvctl("upload", str(digits.paths["h5"]), "--name", "bad/name", server=served_digits.address)
    assert_one_clean_line(refused, 1, "invalid model name")
    assert refused.stderr.strip().count("\n") == 0 and "receiving" not in refused.stderr


# --- the benchmark chart's facts ------------------------------------------------------------------------------------
def test_chart_title_and_speedups_against_every_baseline(tmp_path):
    from kvserve.client.benchmark_plot import title_lines, write_plot
    from kvserve.client.benchmark_report import speedups

    def row(backend: str, precision: str, p50: float) -> dict:
        return {"backend": backend, "precision": precision, "avg_s": p50 * 1.1, "p50_s": p50, "p99_s": p50 * 2, "fps": 1 / p50,
                "batch": 1}

    report = {"name": "digits", "version": "3", "input": "seeded", "results": [
        row("keras", "fp32", 0.1), row("keras-call", "fp32", 0.01), row("tf", "fp32", 0.004), row("CPU", "fp16", 0.0001)]}
    assert speedups(report, report["results"][3]) == pytest.approx({"keras": 1000, "keras-call": 100, "tf": 40})
    title, subtitle = title_lines(report, {"precision": "fp16", "cpu": "Some CPU", "date": "2026-11-25", "iterations": "20"})
    assert "digits v3" in title and "fp16" in title
    for fact in ("Some CPU", "2026-11-25", "20 timed iterations", "measured in-process on the server"):
        assert fact in subtitle
    write_plot(report, tmp_path / "chart.png", {"precision": "fp16", "cpu": "Some CPU", "date": "2026-11-25", "iterations": "20"})
    assert (tmp_path / "chart.png").read_bytes()[:4] == b"\x89PNG"
