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
import os
import re
import shlex
import subprocess
import tarfile
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable

from .errors import BenchmarkError, ConfigError
from .targets import TargetProfile

SUITE_SCHEMA = "embedded-pipeline/bench-suite/1"
PROBE_SCHEMA = "embedded-pipeline/probe/1"
RUNNER = "run_model.py"

# The probe's runtime names that can run each artifact format (what run_model.py imports).
FORMAT_RUNTIMES: dict[str, tuple[str, ...]] = {
    "tflite": ("litert", "tflite-runtime", "tensorflow"),
    "onnx": ("onnxruntime", "onnxruntime-cuda"),
    "trt": ("tensorrt",),
    "torch": ("torch",),
}
# The profile runtimes (KNOWN_RUNTIMES) and the format each serves, for picking an install command.
PROFILE_RUNTIME_FORMAT = {
    "litert": "tflite", "tflite-runtime": "tflite", "edgetpu": "tflite",
    "onnxruntime": "onnx", "onnxruntime-cuda": "onnx", "tensorrt": "trt", "torch": "torch",
}
ARCH_ALIASES = {"arm64": "aarch64", "armv8": "aarch64", "amd64": "x86_64", "x64": "x86_64", "x86-64": "x86_64"}

STEP_TIMEOUT_S = 300.0  # verify, probe, reading the result back
COPY_TIMEOUT_S = 900.0  # the bundle upload
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


_HOST_PATTERN = r"(?:(?P<user>[^@]+)@)?(?:\[(?P<v6>[^\]]+)\]|(?P<name>[^:\[\]]+))(?::(?P<port>\d+))?"


@dataclass(frozen=True)
class SSHTarget:
    """How to reach a board: an OpenSSH destination plus the options every ssh call uses."""

    destination: str  # "user@host" or "host" (or a Host alias from ~/.ssh/config)
    port: int | None = None
    identity_file: str | None = None
    python: str = "python3"  # the board's interpreter: a command on its PATH or an absolute path
    remote_dir: str = ".cache/embedded-pipeline"  # relative to the remote home, or absolute
    connect_timeout_s: float = 10.0
    retries: int = 2  # extra attempts after a connection failure (ssh exit 255), with a short backoff
    known_hosts: str | None = None  # a UserKnownHostsFile; with it, StrictHostKeyChecking=accept-new
    options: tuple[str, ...] = ()  # extra "-o" options, e.g. ("ProxyJump=gateway",)

    def __post_init__(self):
        if not self.destination or self.destination.startswith("-") or any(c.isspace() for c in self.destination):
            raise ConfigError(f"bad ssh destination {self.destination!r}, expected user@host or host")
        if self.port is not None and not (isinstance(self.port, int) and 0 < self.port < 65536):
            raise ConfigError(f"bad ssh port {self.port!r}, expected an integer between 1 and 65535")
        if not self.python.strip():
            raise ConfigError("bad remote Python: empty")
        if self.connect_timeout_s <= 0 or self.retries < 0:
            raise ConfigError(f"bad ssh connect timeout {self.connect_timeout_s!r} or retries {self.retries!r}")

    @classmethod
    def parse(cls, host: str, **options) -> "SSHTarget":
        """``user@host``, ``user@host:2222``, ``[::1]:2222`` or ``ssh://user@host:2222`` -> SSHTarget."""
        text = host[len("ssh://"):] if host.startswith("ssh://") else host
        port = None
        match = re.fullmatch(_HOST_PATTERN, text)
        if not match:
            raise ConfigError(f"bad ssh host {host!r}, expected user@host or user@host:port")
        if match["port"]:
            port = int(match["port"])
        name = match["v6"] or match["name"]
        destination = f"{match['user']}@{name}" if match["user"] else name
        return cls(destination, port=options.pop("port", None) or port, **options)

    @property
    def label(self) -> str:
        """The destination as messages name it."""
        return self.destination + (f" (port {self.port})" if self.port else "")

    def command(self, remote_command: str) -> list[str]:
        """The ssh argv that runs ``remote_command`` (a shell command line) on the board."""
        argv = ["ssh", "-T", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={max(1, round(self.connect_timeout_s))}",
                "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4", "-o", "LogLevel=ERROR"]
        if self.port:
            argv += ["-p", str(self.port)]
        if self.identity_file:
            argv += ["-i", os.path.expanduser(self.identity_file), "-o", "IdentitiesOnly=yes"]
        if self.known_hosts:
            argv += ["-o", f"UserKnownHostsFile={os.path.expanduser(self.known_hosts)}",
                     "-o", "StrictHostKeyChecking=accept-new"]
        for option in self.options:
            argv += ["-o", option]
        return argv + ["--", self.destination, remote_command]

    def path(self, *parts: str) -> str:
        """A remote path under ``remote_dir`` (kept relative to the home directory when relative)."""
        base = self.remote_dir[2:] if self.remote_dir.startswith("~/") else self.remote_dir
        return "/".join([base.rstrip("/") or "/", *parts]) if base else "/".join(parts)


@dataclass
class _Result:
    returncode: int
    stdout: str
    stderr: str
    timed_out: bool = False

    @property
    def last_line(self) -> str:
        return _last_line(self.stderr)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no message"


def _pump(stream: IO[bytes], sink: list[str], log: Callable[[str], None] | None, prefix: str) -> None:
    for raw in iter(stream.readline, b""):
        line = raw.decode(errors="replace")
        sink.append(line)
        if log is not None and line.strip():
            log(prefix + line.rstrip())
    stream.close()


def _run_once(argv: list[str], timeout: float, stdin_file: IO[bytes] | None, hold_stdin: bool,
              log: Callable[[str], None] | None, prefix: str) -> _Result:
    """Run one ssh command; stderr lines go to ``log`` as they arrive when ``log`` is given."""
    held = None
    if stdin_file is not None:
        stdin = stdin_file
    elif hold_stdin:  # a pipe whose write end stays open until ssh ends: the remote side sees EOF only then
        read_end, held = os.pipe()
        stdin = read_end
    else:
        stdin = subprocess.DEVNULL
    try:
        proc = subprocess.Popen(argv, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except FileNotFoundError as exc:
        raise BenchmarkError("the OpenSSH client 'ssh' is not installed on this machine "
                             "(install openssh-client)") from exc
    finally:
        if held is not None:
            os.close(stdin)
    out: list[str] = []
    err: list[str] = []
    threads = [threading.Thread(target=_pump, args=(proc.stdout, out, None, ""), daemon=True),
               threading.Thread(target=_pump, args=(proc.stderr, err, log, prefix), daemon=True)]
    for thread in threads:
        thread.start()
    timed_out = False
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        proc.kill()
        proc.wait()
    finally:
        if held is not None:
            os.close(held)
    for thread in threads:
        thread.join(timeout=10)
    return _Result(proc.returncode, "".join(out), "".join(err), timed_out)


_AUTH = ("Permission denied (", "Too many authentication failures", "no matching host key type",
         "Unable to negotiate")
_HOSTKEY = ("Host key verification failed", "REMOTE HOST IDENTIFICATION HAS CHANGED")


def ssh_run(ssh: SSHTarget, remote_command: str, *, timeout: float = STEP_TIMEOUT_S, what: str = "command",
            stdin_file: IO[bytes] | None = None, hold_stdin: bool = False, retry: bool = True,
            log: Callable[[str], None] | None = None, prefix: str = "") -> _Result:
    """Run ``remote_command`` on the board; raise on ssh's own failures, return the remote exit status.

    Connection failures (exit 255, other than authentication or host-key failures) are retried
    ``ssh.retries`` times with a short backoff when ``retry`` is set.
    """
    argv = ssh.command(remote_command)
    attempts = 1 + (ssh.retries if retry else 0)
    for attempt in range(1, attempts + 1):
        if stdin_file is not None:
            stdin_file.seek(0)
        result = _run_once(argv, timeout, stdin_file, hold_stdin, log, prefix)
        if result.timed_out:
            raise BenchmarkError(f"{what} on {ssh.label} timed out after {timeout:g} s (ssh killed): "
                                 f"{result.last_line}")
        if result.returncode != 255:
            return result
        text = result.stderr
        if any(marker in text for marker in _AUTH):
            raise BenchmarkError(
                f"ssh to {ssh.label} refused authentication ({result.last_line}); pass the right identity file "
                f"or add this machine's public key to the board's ~/.ssh/authorized_keys")
        if any(marker in text for marker in _HOSTKEY):
            raise BenchmarkError(f"host key of {ssh.label} does not match the known one ({result.last_line}); "
                                 f"check the board, then remove its old entry with ssh-keygen -R")
        if attempt < attempts:
            time.sleep(min(0.5 * 2 ** (attempt - 1), 5.0))
    if not retry:
        raise BenchmarkError(f"connection to {ssh.label} lost during {what}: {result.last_line}")
    raise BenchmarkError(f"cannot reach {ssh.label} over ssh ({attempts} attempt{'s' * (attempts > 1)}): "
                         f"{result.last_line}")


def _numpy_install(ssh: SSHTarget, profile: TargetProfile | None) -> str:
    """The profile's install command of its preferred runtime when that installs numpy too, else pip."""
    if profile is not None:
        command = profile.install.get(profile.runtimes[0], "")
        if "numpy" in command:
            venv = " (then pass that environment's python with --remote-python)" if " venv " in command else ""
            return command + venv
    return f"{ssh.python} -m pip install numpy"


def _numpy_missing(result: _Result) -> bool:
    return result.returncode != 0 and re.search(r"No module named '?numpy'?", result.last_line) is not None


def remote_python(ssh: SSHTarget) -> str:
    """The board's interpreter as a shell word: ``~/`` and home-relative paths work from any directory."""
    python = ssh.python
    if python.startswith("~/"):
        return '"$HOME"/' + shlex.quote(python[2:])
    if "/" in python and not python.startswith("/"):
        return '"$HOME"/' + shlex.quote(python)
    return shlex.quote(python)


def _check_runner(ssh: SSHTarget, result: _Result, what: str, profile: TargetProfile | None = None) -> None:
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
                             f"{_last_line(result.stdout)}")
    return probe


def normalise_arch(arch: str) -> str:
    arch = arch.strip().lower()
    return ARCH_ALIASES.get(arch, arch)


def install_hint(profile: TargetProfile, fmt: str) -> str:
    """The install command of the profile's first runtime that serves ``fmt``, as a message fragment."""
    for runtime in profile.runtimes:
        if PROFILE_RUNTIME_FORMAT.get(runtime) == fmt:
            command = profile.install.get(runtime)
            if command:
                return f"install {runtime}: {command}"
            return f"install {runtime} (profile {profile.name} gives no install command for it)"
    return f"profile {profile.name} lists no runtime for {fmt} (its runtimes: {', '.join(profile.runtimes)})"


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
        fmt = kind.split("-")[0]
        served_by = FORMAT_RUNTIMES.get(fmt, (fmt,))
        if not any(runtimes.get(name) for name in served_by):
            raise BenchmarkError(
                f"artifact {kind} cannot run on {ssh.label}: no {fmt} runtime ({' or '.join(served_by)}) "
                f"for {ssh.python}; {install_hint(profile, fmt)}")


def _describe(probe: dict) -> str:
    found = [f"{name} {version}" for name, version in (probe.get("runtimes") or {}).items() if version]
    return (f"{probe.get('machine')}, Python {probe.get('python')}, numpy {probe.get('numpy')}, "
            f"runtimes: {', '.join(found) or 'none'}")


def _write_json_atomic(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remote_bench(ssh: SSHTarget, bundle_dir: Path, profile: TargetProfile, runner_args: list[str], out_json: Path,
                 timeout_s: float = 1800, log: Callable[[str], None] = print) -> dict:
    """Benchmark every artifact of ``bundle_dir`` on the board behind ``ssh``; returns the bench-suite JSON.

    Copies the bundle (unless already there), probes the board, checks it against ``profile``, runs
    ``run_model.py bench-all`` with ``runner_args`` under ``timeout_s``, writes the result to ``out_json``
    (atomically) with a ``location`` entry added, and returns it.
    """
    bundle_dir, out_json = Path(bundle_dir), Path(out_json)
    manifest_path = bundle_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
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

    q_out = shlex.quote(f"{remote}/{remote_out}")
    fetched = ssh_run(ssh, f"cat {q_out} && rm -f {q_out}", what="reading the result")
    if fetched.returncode != 0:
        raise BenchmarkError(f"{RUNNER} bench-all on {ssh.label} left no result {remote}/{remote_out}: "
                             f"{fetched.last_line}")
    try:
        suite = json.loads(fetched.stdout)
    except json.JSONDecodeError as exc:
        raise BenchmarkError(f"the result from {ssh.label} is not valid JSON: {exc}") from exc
    if not isinstance(suite, dict) or suite.get("schema") != SUITE_SCHEMA or not isinstance(suite.get("results"), list):
        schema = suite.get("schema") if isinstance(suite, dict) else type(suite).__name__
        raise BenchmarkError(f"the result from {ssh.label} has schema {schema!r}, expected {SUITE_SCHEMA!r}")
    suite["location"] = {"kind": "ssh", "destination": ssh.destination, "port": ssh.port}
    _write_json_atomic(out_json, suite)
    log(f"result from {ssh.label}: {len(suite['results'])} artifacts")
    return suite
