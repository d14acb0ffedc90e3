"""A real OpenSSH server for the tests: ``sshd -D -e`` on 127.0.0.1, a free port, temporary keys, this user.

The ``sshd_server`` fixture (registered in conftest.py) yields an ``SSHServer`` whose ``target()``
builds a ``pipeline.remote.SSHTarget`` for it; ``python -m tests.sshd`` keeps one running and prints
the ``pipeline bench`` flags that reach it. The server needs no running system sshd service and no
changes to /etc/ssh: host key, authorized keys, pid file and log live in a temporary directory.
"""
from __future__ import annotations

import getpass
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

SSHD = "/usr/sbin/sshd"
# As root, sshd's privilege separation chroots into this compiled-in directory; the Debian service
# creates it at start, so it is absent where the service has never run.
PRIVSEP_DIR = Path("/run/sshd")


@dataclass
class SSHServer:
    host: str
    port: int
    user: str
    identity_file: Path  # a client key the server accepts
    other_identity_file: Path  # a client key the server does not accept
    known_hosts: Path
    log_file: Path

    @property
    def destination(self) -> str:
        return f"{self.user}@{self.host}"

    def target(self, **changes):
        from pipeline.remote import SSHTarget

        options = dict(destination=self.destination, port=self.port, identity_file=str(self.identity_file),
                       known_hosts=str(self.known_hosts), connect_timeout_s=5, retries=1)
        return SSHTarget(**{**options, **changes})

    def cli_options(self) -> list[str]:
        """The `pipeline bench` flags that reach this server."""
        return ["--host", self.destination, "--ssh-port", str(self.port), "--ssh-identity", str(self.identity_file),
                "--ssh-known-hosts", str(self.known_hosts)]

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.is_file() else ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)], check=True)


def _wait_for_banner(proc: subprocess.Popen, port: int, log_file: Path, timeout: float = 15.0) -> bool:
    """True once the server answers with its SSH banner; False if it exited (e.g. the port was taken)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                if s.recv(64).startswith(b"SSH-"):
                    return True
        except OSError:
            pass
        time.sleep(0.1)
    proc.kill()
    proc.wait()
    raise RuntimeError(f"sshd did not answer on 127.0.0.1:{port} within {timeout:g} s; log:\n"
                       + log_file.read_text(errors="replace"))


def _check_login(server: SSHServer) -> None:
    """One login with the accepted key, so that a server that cannot log this user in fails here, explained."""
    done = subprocess.run(server.target().command("true"), capture_output=True, text=True, timeout=60)
    if done.returncode == 0:
        return
    log = server.log()
    hint = ""
    if "account is locked" in log:  # with UsePAM no, sshd refuses users whose shadow password starts with '!'
        hint = (f" sshd says the account {server.user} is locked; without PAM sshd refuses such accounts even for "
                f"key logins: give it a non-locked password field, e.g. usermod -p '*' {server.user}.")
    pytest.fail(f"the test sshd on port {server.port} does not let {server.user} log in: "
                f"{done.stderr.strip() or done.returncode}.{hint}\nsshd log:\n{log}", pytrace=False)


def require_openssh() -> None:
    if platform.system() != "Linux":
        pytest.skip("the sshd fixture runs on Linux only")
    if not os.access(SSHD, os.X_OK):
        pytest.fail(f"{SSHD} not found: install openssh-server (make setup does)", pytrace=False)
    for tool in ("ssh", "ssh-keygen"):
        if shutil.which(tool) is None:
            pytest.fail(f"'{tool}' not found: install openssh-client (make setup does)", pytrace=False)


@contextmanager
def running_sshd(root: Path, chroot: Path | None = None) -> Iterator[SSHServer]:
    """An OpenSSH server on 127.0.0.1 for the current user, its keys and configuration under ``root``; with
    ``chroot``, the sshd of that root file system run inside it, for its root user (an emulated board's)."""
    for name in ("host_ed25519", "client_ed25519", "other_ed25519"):
        _keygen(root / name)
    # What sshd reads lives where it can see it: under the chroot when there is one.
    served = chroot / "etc" / "embedded-pipeline-sshd" if chroot else root
    seen = Path("/etc/embedded-pipeline-sshd") if chroot else root
    served.mkdir(parents=True, exist_ok=True)
    if chroot:
        shutil.copy2(root / "host_ed25519", served / "host_ed25519")
    (served / "authorized_keys").write_text((root / "client_ed25519.pub").read_text())
    privsep = (chroot / "run" / "sshd") if chroot else PRIVSEP_DIR
    if os.geteuid() == 0 and not privsep.is_dir():
        privsep.mkdir(mode=0o755, parents=True, exist_ok=True)
    user = "root" if chroot else getpass.getuser()
    log_file = root / "sshd.log"
    for _ in range(5):  # the free port can be taken between probing it and sshd binding it
        port = free_port()
        (served / "sshd_config").write_text("\n".join([
            f"Port {port}",
            "ListenAddress 127.0.0.1",
            f"HostKey {seen / 'host_ed25519'}",
            f"PidFile {seen / 'sshd.pid'}",
            f"AuthorizedKeysFile {seen / 'authorized_keys'}",
            f"AllowUsers {user}",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PermitRootLogin prohibit-password",
            "UsePAM no",
            "StrictModes no",
            "PrintMotd no",
            "X11Forwarding no",
            "LogLevel VERBOSE",
            "",
        ]))
        command = [SSHD, "-D", "-e", "-f", str(seen / "sshd_config")]
        with open(log_file, "ab") as log:
            proc = subprocess.Popen(["chroot", str(chroot), *command] if chroot else command,
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        if _wait_for_banner(proc, port, log_file, timeout=60.0 if chroot else 15.0):
            break
    else:
        raise RuntimeError("sshd did not start; log:\n" + log_file.read_text(errors="replace"))
    server = SSHServer("127.0.0.1", port, user, root / "client_ed25519", root / "other_ed25519",
                       root / "known_hosts", log_file)
    try:
        _check_login(server)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def sshd_server(tmp_path_factory):
    require_openssh()
    with running_sshd(tmp_path_factory.mktemp("sshd")) as server:
        yield server


if __name__ == "__main__":  # python -m tests.sshd: this machine as a "board" for trying `pipeline bench --host`
    with tempfile.TemporaryDirectory() as tmp, running_sshd(Path(tmp)) as board:
        print("pipeline bench options:", " ".join(board.cli_options()), "--remote-python", sys.executable, flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
