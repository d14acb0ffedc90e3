"""On-device benchmarking over SSH, against a real OpenSSH server on 127.0.0.1 (tests/sshd.py).

The "board" is this machine: its interpreter is this venv's Python (numpy, ai-edge-litert,
onnxruntime) for the happy path, /usr/bin/python3 (no numpy) or a path that does not exist for the errors.
"""
from __future__ import annotations

import hashlib
import json
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from board_runtime.schemas import BUNDLE_SCHEMA
from pipeline import remote
from pipeline.errors import BenchmarkError, ConfigError
from pipeline.formats import FORMATS, Format, register_format
from pipeline.formats.registry import float_io
from pipeline.remote import SSHTarget, check_board, ensure_bundle, normalise_arch, remote_bench
from pipeline.stages.bundle import copy_runtime
from pipeline.targets import load_target
from tests.sshd import free_port

RUNNER_ARGS = ["--runs", "5", "--warmup", "1", "--repeats", "1", "--max-seconds", "2"]
MACHINE = normalise_arch(platform.machine())


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message, message
    return message


def with_arch(profile, arch: str):
    return replace(profile, board=replace(profile.board, cpu_arch=arch))


def host_profile():
    """The host profile, for this machine's architecture (the profile is written for x86_64)."""
    profile = load_target("host")
    return profile if normalise_arch(profile.board.cpu_arch) == MACHINE else with_arch(profile, MACHINE)


def entry(kind: str, **fields) -> dict:
    """A manifest's artifact entry for ``kind``, as the format registry describes it."""
    row = FORMATS[kind]
    return {"kind": kind, "format": row.format, "precision": row.precision, "session": row.session, **fields}


def make_bundle(directory: Path, kinds: tuple[str, ...] = ("onnx-fp32",)) -> Path:
    """A small bundle with the real runtime: placeholder artifact files listed with their sha256."""
    (directory / "artifacts").mkdir(parents=True)
    copy_runtime(directory)
    artifacts = []
    for kind in kinds:
        path = f"artifacts/{kind}.{FORMATS[kind].format}"
        (directory / path).write_bytes(f"placeholder {kind}".encode())
        artifacts.append(entry(kind, path=path, input_shape=[1, 1, 28, 28], input_layout="NCHW", input_dtype="float32",
                               input_quant=None, output_quant=None))
    files = {p.relative_to(directory).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted(directory.rglob("*")) if p.is_file()}
    manifest = {"schema": BUNDLE_SCHEMA, "target": "test", "artifacts": artifacts, "files": files}
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return directory


@pytest.fixture
def bundle(tmp_path):
    return make_bundle(tmp_path / "bundle")


@pytest.fixture
def board(sshd_server, tmp_path):
    """An SSHTarget for the local sshd, with this venv's Python and a fresh remote directory."""
    return sshd_server.target(python=sys.executable, remote_dir=str(tmp_path / "board"))


@pytest.fixture(scope="session")
def real_bundle(tiny_run):
    run, _ = tiny_run
    return run.out / "raspberry-pi-4" / "bundle"


def remote_processes(marker: str) -> list[str]:
    """Command lines of live processes (zombies excluded) working in or naming a path under ``marker``."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            cwd = str((proc / "cwd").readlink())
        except OSError:
            continue
        if (marker in cmdline or cwd.startswith(marker)) and state != "Z":
            found.append(cmdline)
    return found


def wait_gone(marker: str, seconds: float) -> list[str]:
    deadline = time.monotonic() + seconds
    while (left := remote_processes(marker)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


# --- without a server ---------------------------------------------------------------------------------------

def test_ssh_command_options():
    ssh = SSHTarget("pi@board", port=2222, identity_file="/k/id", known_hosts="/k/known", connect_timeout_s=3)
    argv = ssh.command("echo hi")
    assert argv[0] == "ssh" and argv[-3:] == ["--", "pi@board", "echo hi"]
    options = ("BatchMode=yes", "ConnectTimeout=3", "UserKnownHostsFile=/k/known", "StrictHostKeyChecking=accept-new")
    for option in options:
        assert option in argv
    assert argv[argv.index("-p") + 1] == "2222" and argv[argv.index("-i") + 1] == "/k/id"
    assert "StrictHostKeyChecking=accept-new" not in SSHTarget("board").command("true")
    assert SSHTarget("board").path("bundles", "abc") == ".cache/embedded-pipeline/bundles/abc"
    assert SSHTarget("board", remote_dir="~/ep/").path("x") == "ep/x"
    assert remote.remote_python(SSHTarget("board", python="~/.venvs/ep/bin/python")) == '"$HOME"/.venvs/ep/bin/python'
    assert remote.remote_python(SSHTarget("board", python="/opt/py 3/python")) == "'/opt/py 3/python'"
    assert remote.remote_python(SSHTarget("board")) == "python3"


def test_parse_host_and_bad_targets():
    assert SSHTarget.parse("pi@board:2222") == SSHTarget("pi@board", port=2222)
    assert SSHTarget.parse("ssh://pi@[fe80::1]:22", python="python3.11") == SSHTarget("pi@fe80::1", port=22,
                                                                                   python="python3.11")
    assert SSHTarget.parse("board", port=23).port == 23
    for bad in ("-oProxyCommand=x", "pi@board:notaport", ""):
        with pytest.raises(ConfigError):
            SSHTarget.parse(bad)
    with pytest.raises(ConfigError):
        SSHTarget("board", port=70000)


def test_check_board_architecture_and_runtimes():
    pi = load_target("raspberry-pi-4")
    ssh = SSHTarget("pi@board")
    manifest = {"artifacts": [entry("onnx-fp32"), entry("tflite-int8")]}
    everything = {"litert": "2.1.0", "onnxruntime": "1.23.0"}
    check_board(ssh, {"machine": "arm64", "runtimes": everything}, pi, manifest)  # arm64 is aarch64
    only_onnx = {"machine": "aarch64", "runtimes": {"onnxruntime": "1.23.0"}}
    kinds = remote.selected_kinds(manifest, ["--runs", "5", "--artifacts", "onnx-fp32"])
    assert kinds == ["onnx-fp32"] and remote.selected_kinds(manifest, []) == ["onnx-fp32", "tflite-int8"]
    check_board(ssh, only_onnx, pi, manifest, kinds)  # the TFLite artifact is not benchmarked
    with pytest.raises(BenchmarkError) as exc:
        check_board(ssh, {"machine": "AMD64", "runtimes": everything}, pi, manifest)
    assert one_line(exc) == "wrong board at pi@board: board reports x86_64, profile raspberry-pi-4 is for aarch64"
    with pytest.raises(BenchmarkError) as exc:
        check_board(ssh, {"machine": "aarch64", "runtimes": {"onnxruntime": "1.23.0", "litert": None}}, pi, manifest)
    message = one_line(exc)
    assert "artifact tflite-int8" in message and "pi@board" in message
    assert message.endswith(f"install litert: {pi.install['litert']}")


# --- against the real sshd ----------------------------------------------------------------------------------

def test_unreachable_host_fails_fast(tmp_path):
    ssh = SSHTarget("nobody@127.0.0.1", port=free_port(), connect_timeout_s=2, retries=1,
                    known_hosts=str(tmp_path / "known_hosts"))
    started = time.monotonic()
    with pytest.raises(BenchmarkError) as exc:
        ensure_bundle(ssh, make_bundle(tmp_path / "bundle"), log=lambda line: None)
    assert time.monotonic() - started < 10
    message = one_line(exc)
    assert message.startswith(f"cannot reach nobody@127.0.0.1 (port {ssh.port}) over ssh (2 attempts)")
    assert message.endswith("Connection refused")


def test_authentication_refused(sshd_server, bundle, tmp_path):
    ssh = sshd_server.target(identity_file=str(sshd_server.other_identity_file), remote_dir=str(tmp_path / "b"))
    started = time.monotonic()
    with pytest.raises(BenchmarkError) as exc:
        ensure_bundle(ssh, bundle, log=lambda line: None)
    assert time.monotonic() - started < 10  # not retried
    message = one_line(exc)
    assert f"ssh to {sshd_server.destination} (port {sshd_server.port}) refused authentication" in message
    assert "Permission denied (publickey)" in message


def test_bundle_copied_once_and_again_when_changed(board, bundle):
    lines: list[str] = []
    remote_path, copied = ensure_bundle(board, bundle, log=lines.append)
    assert copied and remote_path == f"{board.remote_dir}/bundles/{remote.bundle_id(bundle)}"
    files = [p for p in bundle.rglob("*") if p.is_file()]  # the artifact, the manifest, the runtime
    assert len(files) > 3 and any(line.startswith(f"copying bundle ({len(files)} files") for line in lines)
    local = {p.relative_to(bundle) for p in bundle.rglob("*")}
    assert {p.relative_to(remote_path) for p in Path(remote_path).rglob("*")} == local
    assert not list(Path(remote_path).parent.glob("*.partial-*"))
    assert ensure_bundle(board, bundle, log=lines.append) == (remote_path, False)
    assert lines[-1].endswith("already on " + board.label + " (verified)")
    (Path(remote_path) / "artifacts" / "onnx-fp32.onnx").write_bytes(b"damaged")
    assert ensure_bundle(board, bundle, log=lines.append) == (remote_path, True)
    assert (Path(remote_path) / "artifacts" / "onnx-fp32.onnx").read_bytes() == b"placeholder onnx-fp32"


def test_wrong_architecture(board, bundle, tmp_path):
    other = "x86_64" if MACHINE == "aarch64" else "aarch64"
    profile = load_target("raspberry-pi-4")
    if normalise_arch(profile.board.cpu_arch) != other:
        profile = with_arch(profile, other)
    with pytest.raises(BenchmarkError) as exc:
        remote_bench(board, bundle, profile, RUNNER_ARGS, tmp_path / "out.json", log=lambda line: None)
    assert one_line(exc) == (f"wrong board at {board.label}: board reports {MACHINE}, "
                             f"profile raspberry-pi-4 is for {other}")
    assert not (tmp_path / "out.json").exists()


def test_board_python_not_found(board, bundle, tmp_path):
    ssh = replace(board, python="/nonexistent/bin/python3")
    with pytest.raises(BenchmarkError) as exc:
        remote_bench(ssh, bundle, load_target("raspberry-pi-4"), RUNNER_ARGS, tmp_path / "out.json",
                     log=lambda line: None)
    message = one_line(exc)
    assert message.startswith(f"board Python '/nonexistent/bin/python3' not found on {board.label}")
    assert "--remote-python" in message


def test_numpy_missing(board, bundle, tmp_path):
    system_python = "/usr/bin/python3"
    if not Path(system_python).is_file():
        pytest.skip(f"{system_python} absent")
    if subprocess.run([system_python, "-c", "import numpy"], capture_output=True).returncode == 0:
        pytest.skip(f"{system_python} has numpy")
    profile = load_target("raspberry-pi-4")
    with pytest.raises(BenchmarkError) as exc:
        remote_bench(replace(board, python=system_python), bundle, profile, RUNNER_ARGS, tmp_path / "out.json",
                     log=lambda line: None)
    assert one_line(exc) == (f"numpy is missing on {board.label} for {system_python}; install it with: "
                             f"{profile.install['litert']} (then pass that environment's python with --remote-python)")


@pytest.fixture
def engine_kind():
    """A TensorRT engine kind, built on the board: a test's own registration, as a later issue will add it."""
    def build(plan, target):
        raise AssertionError("the test never builds it")

    register_format(Format(kind="trt-fp16", format="trt", precision="fp16", label="TensorRT fp16", stage="convert",
                           session="tensorrt", runtimes=("tensorrt",), build=build, io=float_io, built_on="board"))
    try:
        yield "trt-fp16"
    finally:
        FORMATS.remove("trt-fp16")


def test_runtime_missing(board, tmp_path, engine_kind):
    """A TensorRT engine in the bundle; this machine has no TensorRT, as the board's probe reports."""
    if subprocess.run([sys.executable, "-c", "import tensorrt"], capture_output=True).returncode == 0:
        pytest.skip("tensorrt is installed here")
    bundle = make_bundle(tmp_path / "bundle", ("onnx-fp32", engine_kind))
    profile = with_arch(load_target("jetson-orin-nano"), MACHINE)  # runtimes: tensorrt, onnxruntime-cuda, ...
    with pytest.raises(BenchmarkError) as exc:
        remote_bench(board, bundle, profile, RUNNER_ARGS, tmp_path / "out.json", log=lambda line: None)
    assert one_line(exc) == (f"artifact trt-fp16 cannot run on {board.label}: no trt runtime (tensorrt) for "
                             f"{sys.executable}; install tensorrt: {profile.install['tensorrt']}")


def test_runner_failure_names_its_last_line(board, bundle, tmp_path):
    """The bundle's ONNX file is a placeholder: probe and checks pass, the benchmark itself fails on the board."""
    with pytest.raises(BenchmarkError) as exc:
        remote_bench(board, bundle, host_profile(), RUNNER_ARGS, tmp_path / "out.json", log=lambda line: None)
    message = one_line(exc)
    assert message.startswith(f"run_model.py bench-all failed on {board.label} (exit 1): "
                              f"error: benchmark of onnx-fp32 failed: ")
    assert not (tmp_path / "out.json").exists()


def test_remote_bench_matches_local_bench_all(board, real_bundle, tmp_path):
    profile = host_profile()
    lines: list[str] = []
    out = tmp_path / "bench" / "remote.json"
    suite = remote_bench(board, real_bundle, profile, RUNNER_ARGS, out, timeout_s=600, log=lines.append)

    local_json = tmp_path / "local.json"
    subprocess.run([sys.executable, str(real_bundle / "run_model.py"), "--manifest", str(real_bundle / "manifest.json"),
                    "bench-all", "--json", str(local_json), *RUNNER_ARGS], check=True, capture_output=True)
    local = json.loads(local_json.read_text())

    assert json.loads(out.read_text()) == suite
    assert not list(out.parent.glob("*.tmp"))
    assert suite["location"] == {"kind": "ssh", "destination": board.destination, "port": board.port}
    assert suite["schema"] == local["schema"] == "embedded-pipeline/bench-suite/1"
    assert set(suite) - {"location"} == set(local)
    assert [r["artifact"] for r in suite["results"]] == [r["artifact"] for r in local["results"]]
    assert [set(r) for r in suite["results"]] == [set(r) for r in local["results"]]
    manifest = json.loads((real_bundle / "manifest.json").read_text())
    assert [r["artifact"] for r in suite["results"]] == [a["kind"] for a in manifest["artifacts"]]
    assert any(line.startswith(f"board {board.label}: {MACHINE}, Python") for line in lines)
    assert any(f"[{board.destination}] [1/" in line for line in lines)  # the runner's progress, streamed
    remote_bundle = Path(board.remote_dir) / "bundles" / remote.bundle_id(real_bundle)
    assert not list((remote_bundle / "results").iterdir())  # read back, then removed from the board


def test_remote_timeout_kills_the_runner(board, real_bundle, tmp_path):
    long_args = ["--runs", "100000000", "--warmup", "0", "--repeats", "1", "--max-seconds", "600",
                 "--artifacts", "onnx-fp32"]
    started = time.monotonic()
    with pytest.raises(BenchmarkError) as exc:
        remote_bench(board, real_bundle, host_profile(), long_args, tmp_path / "out.json", timeout_s=6,
                     log=lambda line: None)
    assert time.monotonic() - started < 60
    assert one_line(exc) == (f"run_model.py bench-all on {board.label} timed out after 6 s and was killed; "
                             f"raise the time limit or lower --runs/--max-seconds")
    assert wait_gone(board.remote_dir, 10) == []


def test_dropped_connection_kills_the_runner(board, real_bundle, tmp_path, monkeypatch):
    """When the local ssh goes away first, the board's watchdog sees its stdin close and kills the runner."""
    monkeypatch.setattr(remote, "KILL_GRACE_S", -294.0)  # the local ssh is killed after 6 s, the board's limit is 300 s
    long_args = ["--runs", "100000000", "--warmup", "0", "--repeats", "1", "--max-seconds", "600",
                 "--artifacts", "onnx-fp32"]
    with pytest.raises(BenchmarkError) as exc:
        remote_bench(board, real_bundle, host_profile(), long_args, tmp_path / "out.json", timeout_s=300,
                     log=lambda line: None)
    assert one_line(exc).startswith(f"run_model.py bench-all on {board.label} timed out after 6 s (ssh killed)")
    assert wait_gone(board.remote_dir, 15) == []


def test_pipeline_bench_on_the_board_and_merged_report(tiny_run, small_config, sshd_server, tmp_path,
                                                       capsys):
    """`pipeline bench --host` gives the local run's JSON schema; `report --compare` shows both side by side."""
    from pipeline.cli import main
    from pipeline.orchestrator import Run

    run, _ = tiny_run
    out = tmp_path / "run"
    shutil.copytree(run.out, out)  # the shared artifacts already built; the session's run stays untouched
    Run(small_config(out, targets="host"), log=lambda line: None).execute()
    local = json.loads((out / "host" / "bench" / "bench.json").read_text())
    assert local["location"] == {"kind": "local"}
    options = ["--out", str(out), "--target", "host", *sshd_server.cli_options(), "--remote-python", sys.executable]
    assert main(["bench", *options]) == 0, capsys.readouterr().err
    remote = json.loads((out / "host" / "bench" / "bench.json").read_text())
    assert remote["schema"] == local["schema"] and remote["location"]["kind"] == "ssh"
    assert set(remote) == set(local) | {"board_evaluation"}  # with data, the board's own outputs are scored
    evaluated = remote["board_evaluation"]
    assert evaluated["samples"] > 0 and {r["kind"] for r in evaluated["artifacts"]} == {
        r["artifact"] for r in remote["results"]}
    assert all(r["agreement"] == 100.0 and r["max_logit_diff"] < 1e-4 for r in evaluated["artifacts"])  # same host
    assert [r["artifact"] for r in remote["results"]] == [r["artifact"] for r in local["results"] if r["artifact"] !=
                                                           "torch-fp32"]  # the bundle has no PyTorch reference
    assert all(set(r) == set(local["results"][0]) for r in remote["results"])
    assert main(["report", "--out", str(out)]) == 0
    report = json.loads((out / "host" / "report.json").read_text())
    assert report["measured_on"]["kind"] == "ssh" and report["estimates"] == []  # measured: no estimates
    assert "the board, over SSH" in (out / "host" / "report.md").read_text()
    assert main(["report", "--compare", str(out / "raspberry-pi-4"), str(out / "host"),
                 "--out", str(tmp_path / "cmp")]) == 0
    merged = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    places = {(r["board"], r["measured_on"].split(":")[0]) for r in merged["measured"]}
    assert places == {("raspberry-pi-4", "local host"), ("host", f"ssh {sshd_server.destination}")}
    assert f"| host | fmnist-tiny, {report['model']['flops'] / 1e6:.1f} MFLOPs | ssh {sshd_server.destination}:" in \
        (tmp_path / "cmp" / "compare.md").read_text()
