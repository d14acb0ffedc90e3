"""On-device benchmarking over SSH with the system OpenSSH client.

``remote_bench`` copies a target's bundle to a board, checks that the board can run it (architecture,
numpy, a runtime for every artifact format), runs the bundle's own ``run_model.py bench-all`` there
with the board's Python and brings the JSON result back::

    ssh = SSHTarget("pi@raspberrypi.local", identity_file="~/.ssh/id_ed25519")
    suite = remote_bench(ssh, Path("out/raspberry-pi-4/bundle"), load_target("raspberry-pi-4"),
                         ["--runs", "200"], Path("out/raspberry-pi-4/bench/remote.json"))

Every ssh call runs in batch mode (never prompts). Bundles live on the board under
``<remote_dir>/bundles/<first 12 hex digits of the sha256 of manifest.json>/`` and are copied only when
``run_model.py verify`` does not already pass there. Every failure is a one-line ``BenchmarkError``
that names the host.
"""
from __future__ import annotations

import hashlib
import json
import re
import shlex
import tarfile
import tempfile
import time
import uuid
from pathlib import Path
from typing import IO, Callable

from board_runtime.schemas import LOGITS_SCHEMA, PROBE_SCHEMA, SUITE_SCHEMA, TIMINGS_SCHEMA
from board_runtime.sessions import SESSIONS

from .artifacts import write_json
from .errors import BenchmarkError
from .formats import FORMATS
from .profile import TargetProfile
from .ssh import SSHTarget, SSHResult, last_line, remote_python, ssh_run

RUNNER = "run_model.py"
ARCH_ALIASES = {"arm64": "aarch64", "armv8": "aarch64", "amd64": "x86_64", "x64": "x86_64", "x86-64": "x86_64"}

COPY_TIMEOUT_S = 900.0  # the bundle upload
INSTALL_TIMEOUT_S = 1800.0  # one runtime's install command (pip under emulation, apt on a slow board)
KILL_GRACE_S = 30.0  # the local ssh outlives the remote time limit by this much before it is killed

# Run on the board around bench-all: the runner gets its own session so that it and every process it
# starts are killed together when the time limit passes, or when the ssh connection goes away (stdin EOF).
_WATCHDOG = r"""
import os, signal, subprocess, sys, threading
limit = float(sys.argv[1])
child = subprocess.Popen(sys.argv[2:], stdin=subprocess.DEVNULL, start_new_session=True)
def stop():
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except OSError:
        pass
def watch_stdin():
    try:
        while os.read(0, 4096):
            pass
    except OSError:
        pass
    stop()
threading.Thread(target=watch_stdin, daemon=True).start()
try:
    code = child.wait(timeout=limit)
except subprocess.TimeoutExpired:
    stop()
    child.wait()
    sys.stderr.write("embedded-pipeline: time limit of %g s exceeded, runner killed\n" % limit)
    sys.exit(124)
sys.exit(code if code >= 0 else 128 - code)
"""


def _numpy_install(ssh: SSHTarget, profile: TargetProfile | None) -> str:
    """The profile's install command of its preferred runtime when that installs numpy too, else pip."""
    if profile is not None:
        command = profile.install.get(profile.runtimes[0], "")
        if "numpy" in command:
            venv = " (then pass that environment's python with --remote-python)" if " venv " in command else ""
            return command + venv
    return f"{ssh.python} -m pip install numpy"


def _numpy_missing(result: SSHResult) -> bool:
    return result.returncode != 0 and re.search(r"No module named '?numpy'?", result.last_line) is not None


def _check_runner(ssh: SSHTarget, result: SSHResult, what: str, profile: TargetProfile | None = None) -> None:
    """Turn a failed run of the board's Python into a one-line error (nothing when it succeeded)."""
    if result.returncode == 0:
        return
    if result.returncode == 127:
        lines = [line.strip() for line in result.stderr.splitlines()]
        said = next((line for line in lines if "not found" in line or "No such file" in line), result.last_line)
        raise BenchmarkError(
            f"board Python '{ssh.python}' not found on {ssh.label} ({said}); "
            f"pass the board's interpreter with --remote-python")
    if _numpy_missing(result):
        raise BenchmarkError(f"numpy is missing on {ssh.label} for {ssh.python}; install it with: "
                             f"{_numpy_install(ssh, profile)}")
    hint = ("; the bundle's runner is older than this pipeline, rebuild the bundle"
            if "invalid choice" in result.last_line else "")
    raise BenchmarkError(f"{what} failed on {ssh.label} (exit {result.returncode}): {result.last_line}{hint}")


def bundle_id(bundle_dir: Path) -> str:
    """The first 12 hex digits of the sha256 of the bundle's manifest.json."""
    return hashlib.sha256((Path(bundle_dir) / "manifest.json").read_bytes()).hexdigest()[:12]


def _tar_bundle(bundle_dir: Path, fileobj: IO[bytes]) -> tuple[int, int]:
    """Write the bundle's files as a tar stream (owner reset, no caches); returns (files, bytes)."""
    files = total = 0

    def clean(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        if "__pycache__" in info.name.split("/"):
            return None
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info

    with tarfile.open(fileobj=fileobj, mode="w|", format=tarfile.USTAR_FORMAT) as tar:
        for path in sorted(bundle_dir.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                tar.add(path, arcname=path.relative_to(bundle_dir).as_posix(), filter=clean)
                files += 1
                total += path.stat().st_size
    return files, total


def ensure_bundle(ssh: SSHTarget, bundle_dir: Path, log: Callable[[str], None] = print,
                  profile: TargetProfile | None = None) -> tuple[str, bool]:
    """Put the bundle on the board unless ``run_model.py verify`` already passes there.

    Returns (remote bundle directory, whether it was copied).
    """
    bundle_dir = Path(bundle_dir)
    if not (bundle_dir / "manifest.json").is_file() or not (bundle_dir / RUNNER).is_file():
        raise BenchmarkError(f"{bundle_dir} is not a bundle (manifest.json and {RUNNER} expected); "
                             f"run the bundle stage first")
    remote = ssh.path("bundles", bundle_id(bundle_dir))
    q_remote, q_python = shlex.quote(remote), remote_python(ssh)
    verify = f"cd {q_remote} 2>/dev/null && {q_python} {RUNNER} verify"
    existing = ssh_run(ssh, verify, what=f"{RUNNER} verify")
    if existing.returncode == 0:
        log(f"bundle {remote} already on {ssh.label} (verified)")
        return remote, False
    if existing.returncode == 127 or _numpy_missing(existing):
        _check_runner(ssh, existing, f"{RUNNER} verify", profile)
    staging = f"{remote}.partial-{uuid.uuid4().hex[:8]}"
    q_staging = shlex.quote(staging)
    unpack = (f"rm -rf {q_staging} && mkdir -p {q_staging} && tar -C {q_staging} -xf - && "
              f"rm -rf {q_remote} && mv {q_staging} {q_remote}")
    with tempfile.TemporaryFile() as stream:
        files, size = _tar_bundle(bundle_dir, stream)
        log(f"copying bundle ({files} files, {size / 2**20:.1f} MiB) to {ssh.label}:{remote}")
        copied = ssh_run(ssh, unpack, timeout=COPY_TIMEOUT_S, what="bundle copy", stdin_file=stream)
    if copied.returncode != 0:
        try:
            ssh_run(ssh, f"rm -rf {q_staging}", what="cleanup", retry=False)
        except BenchmarkError:
            pass  # the copy's own error says more
        hint = " (tar not found on the board)" if copied.returncode == 127 else ""
        raise BenchmarkError(f"copying the bundle to {ssh.label}:{remote} failed{hint}: {copied.last_line}")
    check = ssh_run(ssh, verify, what=f"{RUNNER} verify")
    if check.returncode != 0:
        _check_runner(ssh, check, f"{RUNNER} verify", profile)
    return remote, True


def probe_board(ssh: SSHTarget, remote: str, profile: TargetProfile | None = None) -> dict:
    """Run ``run_model.py probe`` in the remote bundle; returns its JSON."""
    result = ssh_run(ssh, f"cd {shlex.quote(remote)} && {remote_python(ssh)} {RUNNER} probe",
                     what=f"{RUNNER} probe")
    _check_runner(ssh, result, f"{RUNNER} probe", profile)
    try:
        probe = json.loads(result.stdout)
    except json.JSONDecodeError:
        probe = None
    if not isinstance(probe, dict) or probe.get("schema") != PROBE_SCHEMA:
        raise BenchmarkError(f"{RUNNER} probe on {ssh.label} printed no {PROBE_SCHEMA} JSON: "
                             f"{last_line(result.stdout)}")
    return probe


def normalise_arch(arch: str) -> str:
    arch = arch.strip().lower()
    return ARCH_ALIASES.get(arch, arch)


def install_hint(profile: TargetProfile, kind: str) -> str:
    """The install command of the profile's first runtime that runs ``kind``, as a message fragment."""
    for runtime in profile.runtimes:
        if runtime in FORMATS[kind].runtimes:
            command = profile.install.get(runtime)
            if command:
                return f"install {runtime}: {command}"
            return f"install {runtime} (profile {profile.name} gives no install command for it)"
    return f"profile {profile.name} lists no runtime for {kind} (its runtimes: {', '.join(profile.runtimes)})"


def selected_kinds(manifest: dict, runner_args: list[str]) -> list[str]:
    """The artifact kinds bench-all will run: ``--artifacts k1,k2`` from the runner's arguments, else all."""
    chosen = ""
    for i, arg in enumerate(runner_args):
        if arg == "--artifacts" and i + 1 < len(runner_args):
            chosen = runner_args[i + 1]
        elif arg.startswith("--artifacts="):
            chosen = arg.split("=", 1)[1]
    kinds = [k for k in chosen.split(",") if k]
    return kinds or [a["kind"] for a in manifest.get("artifacts", [])]


def check_board(ssh: SSHTarget, probe: dict, profile: TargetProfile, manifest: dict,
                kinds: list[str] | None = None) -> None:
    """The board must have the profile's architecture and a runtime for every artifact (of ``kinds``) in the bundle."""
    machine = normalise_arch(str(probe.get("machine", "")))
    expected = normalise_arch(profile.board.cpu_arch)
    if machine != expected:
        raise BenchmarkError(f"wrong board at {ssh.label}: board reports {machine or 'no architecture'}, "
                             f"profile {profile.name} is for {expected}")
    runtimes = probe.get("runtimes") or {}
    for artifact in manifest.get("artifacts", []):
        kind = artifact["kind"]
        if kinds is not None and kind not in kinds:
            continue
        served_by = SESSIONS[artifact["session"]].runtimes if artifact["session"] in SESSIONS else (artifact["session"],)
        if not any(runtimes.get(name) for name in served_by):
            raise BenchmarkError(
                f"artifact {kind} cannot run on {ssh.label}: no {artifact['format']} runtime "
                f"({' or '.join(served_by)}) for {ssh.python}; {install_hint(profile, kind)}")


def _describe(probe: dict) -> str:
    found = [f"{name} {version}" for name, version in (probe.get("runtimes") or {}).items() if version]
    return (f"{probe.get('machine')}, Python {probe.get('python')}, numpy {probe.get('numpy')}, "
            f"runtimes: {', '.join(found) or 'none'}")


def install_runtimes(ssh: SSHTarget, profile: TargetProfile, kinds: list[str],
                     log: Callable[[str], None] = print) -> None:
    """Run on the board the profile's install command of each runtime that ``kinds`` need (per kind, the first of
    the profile's runtimes that runs it); the commands are the profile's own, so they may be run again."""
    needed = []
    for kind in kinds:
        runtime = next((r for r in profile.runtimes if r in FORMATS[kind].runtimes), None)
        if runtime is not None and runtime not in needed:
            needed.append(runtime)
    for runtime in needed:
        command = profile.install.get(runtime)
        if not command:
            raise BenchmarkError(f"profile {profile.name} gives no install command for {runtime}")
        log(f"installing {runtime} on {ssh.label}: {command}")
        done = ssh_run(ssh, command, timeout=INSTALL_TIMEOUT_S, what=f"installing {runtime}", retry=False)
        if done.returncode != 0:
            raise BenchmarkError(f"installing {runtime} on {ssh.label} with profile {profile.name}'s command failed "
                                 f"(exit {done.returncode}): {done.last_line}")


def remote_bench(ssh: SSHTarget, bundle_dir: Path, profile: TargetProfile, runner_args: list[str], out_json: Path,
                 timeout_s: float = 1800, log: Callable[[str], None] = print, install: bool = False) -> dict:
    """Benchmark every artifact of ``bundle_dir`` on the board behind ``ssh``; returns the bench-suite JSON.

    Installs the runtimes first with ``install`` (``install_runtimes``), copies the bundle (unless already there),
    probes the board, checks it against ``profile``, runs
    ``run_model.py bench-all`` with ``runner_args`` under ``timeout_s``, writes the result to ``out_json``
    (atomically) with a ``location`` entry added, and returns it.
    """
    bundle_dir, out_json = Path(bundle_dir), Path(out_json)
    manifest_path = bundle_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    if install:
        install_runtimes(ssh, profile, selected_kinds(manifest, [str(a) for a in runner_args]), log)
    remote, _ = ensure_bundle(ssh, bundle_dir, log, profile)
    probe = probe_board(ssh, remote, profile)
    log(f"board {ssh.label}: {_describe(probe)}")
    kinds = selected_kinds(manifest, [str(a) for a in runner_args])
    check_board(ssh, probe, profile, manifest, kinds)

    remote_out = f"results/bench-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}.json"
    runner = [RUNNER, "--manifest", "manifest.json", "bench-all", "--json", remote_out, *runner_args]
    command = (f"cd {shlex.quote(remote)} && mkdir -p results && exec {remote_python(ssh)} -c {shlex.quote(_WATCHDOG)} "
               f"{timeout_s:g} {remote_python(ssh)} " + " ".join(shlex.quote(str(a)) for a in runner))
    log(f"benchmarking {len(kinds)} artifacts on {ssh.label} ({', '.join(kinds)}; time limit {timeout_s:g} s)")
    started = time.monotonic()
    result = ssh_run(ssh, command, timeout=timeout_s + KILL_GRACE_S, what=f"{RUNNER} bench-all", hold_stdin=True,
                     retry=False, log=log, prefix=f"  [{ssh.destination}] ")
    if result.returncode == 124 and "time limit" in result.stderr:
        raise BenchmarkError(f"{RUNNER} bench-all on {ssh.label} timed out after {timeout_s:g} s and was killed; "
                             f"raise the time limit or lower --runs/--max-seconds")
    _check_runner(ssh, result, f"{RUNNER} bench-all", profile)
    log(f"bench-all on {ssh.label} took {time.monotonic() - started:.1f} s")

    suite = _fetch_json(ssh, f"{remote}/{remote_out}", SUITE_SCHEMA, f"{RUNNER} bench-all")
    if not isinstance(suite.get("results"), list):
        raise BenchmarkError(f"the result from {ssh.label} has no list of results")
    suite["location"] = {"kind": "ssh", "destination": ssh.destination, "port": ssh.port}
    write_json(out_json, suite)
    log(f"result from {ssh.label}: {len(suite['results'])} artifacts")
    return suite


def remote_logits(ssh: SSHTarget, bundle_dir: Path, profile: TargetProfile, inputs, kinds: list[str],
                  timeout_s: float = 1800, log: Callable[[str], None] = print) -> dict:
    """Every artifact of ``kinds`` run on the board on ``inputs`` (model inputs, N x C x H x W float32): the board's
    own outputs from ``run_model.py logits`` in the deployed bundle, ``{kind: N x K logits}``; a detector's bundle
    decodes them there: ``{kind: [Detections per sample]}``."""
    import numpy as np

    remote, _ = ensure_bundle(ssh, Path(bundle_dir), log, profile)
    tag = uuid.uuid4().hex[:8]
    q_inputs, q_out = shlex.quote(f"results/inputs-{tag}.npy"), shlex.quote(f"results/logits-{tag}.json")
    q_remote = shlex.quote(remote)
    with tempfile.TemporaryFile() as stream:
        np.save(stream, np.ascontiguousarray(inputs, dtype=np.float32))
        sent = ssh_run(ssh, f"cd {q_remote} && mkdir -p results && cat > {q_inputs}", what="inputs copy",
                       stdin_file=stream, timeout=COPY_TIMEOUT_S)
    if sent.returncode != 0:
        raise BenchmarkError(f"copying the evaluation inputs to {ssh.label} failed: {sent.last_line}")
    log(f"running {len(kinds)} artifacts on {len(inputs)} samples on {ssh.label} (the board's own outputs)")
    command = (f"cd {q_remote} && {remote_python(ssh)} {RUNNER} --manifest manifest.json logits --inputs {q_inputs} "
               f"--artifacts {shlex.quote(','.join(kinds))} --threads {profile.threads} --json {q_out}")
    result = ssh_run(ssh, command, timeout=timeout_s, what=f"{RUNNER} logits", retry=False)
    _check_runner(ssh, result, f"{RUNNER} logits", profile)
    ssh_run(ssh, f"cd {q_remote} && rm -f {q_inputs}", what="cleanup")
    data = _fetch_json(ssh, f"{remote}/results/logits-{tag}.json", LOGITS_SCHEMA, f"{RUNNER} logits")
    if "detections" in data:
        from board_runtime.detection import Detections

        return {kind: [Detections.from_json(d) for d in found] for kind, found in data["detections"].items()}
    return {kind: np.asarray(rows, np.float32) for kind, rows in data["logits"].items()}


def remote_time_models(ssh: SSHTarget, bundle_dir: Path, profile: TargetProfile, runner_args: list[str],
                       timeout_s: float = 1800, log: Callable[[str], None] = print) -> dict:
    """The median latency of each model that the bundle's manifest lists under ``timed_models``, timed on the board
    by ``run_model.py time-models`` in one visit (the compress step's latency table, measured on the board)."""
    remote, _ = ensure_bundle(ssh, Path(bundle_dir), log, profile)
    out = f"results/timings-{uuid.uuid4().hex[:8]}.json"
    command = (f"cd {shlex.quote(remote)} && mkdir -p results && {remote_python(ssh)} {RUNNER} "
               f"--manifest manifest.json time-models --json {shlex.quote(out)} "
               + " ".join(shlex.quote(str(a)) for a in runner_args) + " > /dev/null")
    log(f"timing the bundle's models on {ssh.label} ({RUNNER} time-models)")
    result = ssh_run(ssh, command, timeout=timeout_s, what=f"{RUNNER} time-models", retry=False, log=log,
                     prefix=f"  [{ssh.destination}] ")
    _check_runner(ssh, result, f"{RUNNER} time-models", profile)
    return _fetch_json(ssh, f"{remote}/{out}", TIMINGS_SCHEMA, f"{RUNNER} time-models")


def _fetch_json(ssh: SSHTarget, remote_file: str, schema: str, what: str) -> dict:
    """The JSON that ``what`` left in ``remote_file`` on the board (then removed there), checked for ``schema``."""
    q_file = shlex.quote(remote_file)
    fetched = ssh_run(ssh, f"cat {q_file} && rm -f {q_file}", what="reading the result")
    if fetched.returncode != 0:
        raise BenchmarkError(f"{what} on {ssh.label} left no result {remote_file}: {fetched.last_line}")
    try:
        data = json.loads(fetched.stdout)
    except json.JSONDecodeError as exc:
        raise BenchmarkError(f"the result of {what} on {ssh.label} is not valid JSON: {exc}") from exc
    found = data.get("schema") if isinstance(data, dict) else type(data).__name__
    if found != schema:
        raise BenchmarkError(f"the result of {what} on {ssh.label} has schema {found!r}, expected {schema!r}")
    return data
