"""SSH to a board with the system OpenSSH client: where it is (``SSHTarget``) and one command run there (``ssh_run``).

Every call runs in batch mode (never prompts); connection failures are retried with a short backoff, and
authentication or host-key failures are one-line errors that say what to do.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import IO, Callable

from .errors import BenchmarkError, ConfigError

STEP_TIMEOUT_S = 300.0  # verify, probe, reading the result back
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
class SSHResult:
    returncode: int
    stdout: str
    stderr: str
    timed_out: bool = False

    @property
    def last_line(self) -> str:
        return last_line(self.stderr)


def last_line(text: str) -> str:
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
              log: Callable[[str], None] | None, prefix: str) -> SSHResult:
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
    return SSHResult(proc.returncode, "".join(out), "".join(err), timed_out)


_AUTH = ("Permission denied (", "Too many authentication failures", "no matching host key type",
         "Unable to negotiate")
_HOSTKEY = ("Host key verification failed", "REMOTE HOST IDENTIFICATION HAS CHANGED")


def ssh_run(ssh: SSHTarget, remote_command: str, *, timeout: float = STEP_TIMEOUT_S, what: str = "command",
            stdin_file: IO[bytes] | None = None, hold_stdin: bool = False, retry: bool = True,
            log: Callable[[str], None] | None = None, prefix: str = "") -> SSHResult:
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


def remote_python(ssh: SSHTarget) -> str:
    """The board's interpreter as a shell word: ``~/`` and home-relative paths work from any directory."""
    python = ssh.python
    if python.startswith("~/"):
        return '"$HOME"/' + shlex.quote(python[2:])
    if "/" in python and not python.startswith("/"):
        return '"$HOME"/' + shlex.quote(python)
    return shlex.quote(python)
