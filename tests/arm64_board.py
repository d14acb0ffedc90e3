"""An aarch64 board on this x86-64 machine: a Debian arm64 userland (debootstrap) run under qemu-user emulation,
with its own OpenSSH server on 127.0.0.1 (``tests/sshd.py``, chrooted).

The root file system is built once and kept under ``$EP_BOARD_CACHE`` (default ``~/.cache/embedded-pipeline/
boards``); building it downloads Debian's packages (about 3 minutes here). The ``arm64_board`` fixture yields the
server; ``python -m tests.arm64_board`` keeps one running and prints the ``pipeline bench`` flags that reach it.
Where the machine cannot emulate (not x86-64 Linux, not root, no qemu-user-static or debootstrap, binfmt_misc
unavailable), the tests that need it are skipped with the reason.
"""
from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.sshd import SSHServer, require_openssh, running_sshd

SUITE = "bookworm"  # Debian 12: Python 3.11, the Raspberry Pi OS of the Pi 4 and 5
PACKAGES = "python3,python3-numpy,python3-venv,python3-pip,openssh-server,ca-certificates"
MIRROR = "http://deb.debian.org/debian"
QEMU = Path("/usr/bin/qemu-aarch64-static")
BINFMT = Path("/proc/sys/fs/binfmt_misc")
BINFMT_RULE = Path("/usr/lib/binfmt.d/qemu-aarch64.conf")  # qemu-user-static's rule (flag F: works in a chroot)


def cache_dir() -> Path:
    return Path(os.environ.get("EP_BOARD_CACHE", Path.home() / ".cache" / "embedded-pipeline" / "boards"))


def unavailable() -> str | None:
    """Why this machine cannot run the emulated board, or None."""
    if platform.system() != "Linux" or platform.machine() != "x86_64":
        return f"emulating an aarch64 board needs an x86-64 Linux host (this is {platform.system()} {platform.machine()})"
    if os.geteuid() != 0:
        return "the emulated board needs root (debootstrap, chroot, mounting /proc)"
    if shutil.which("debootstrap") is None or not QEMU.is_file():
        return "debootstrap or qemu-user-static is not installed (make setup installs both)"
    rule = BINFMT / "qemu-aarch64"
    if not rule.is_file():
        if not (BINFMT / "register").exists():
            subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)], capture_output=True)
        if BINFMT_RULE.is_file() and (BINFMT / "register").exists():
            try:
                (BINFMT / "register").write_text(BINFMT_RULE.read_text().strip())
            except OSError as exc:
                return f"cannot register qemu-aarch64 with binfmt_misc: {exc}"
    if not rule.is_file():
        return "binfmt_misc has no qemu-aarch64 rule and none could be registered"
    return None


def rootfs() -> Path:
    """The arm64 root file system, built on first use (into a temporary folder, then renamed)."""
    done = cache_dir() / f"debian-{SUITE}-arm64"
    if (done / "usr" / "sbin" / "sshd").is_file():
        return done
    partial = done.with_name(done.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    print(f"building the arm64 board's root file system in {done} (debootstrap {SUITE})", file=sys.stderr)
    built = subprocess.run(["debootstrap", "--arch=arm64", "--variant=minbase", f"--include={PACKAGES}", SUITE,
                            str(partial), MIRROR], capture_output=True, text=True, timeout=1800)
    if built.returncode != 0:
        tail = (built.stdout + built.stderr).strip().splitlines()[-3:]
        pytest.skip(f"debootstrap of the arm64 board failed (no access to {MIRROR}?): {' | '.join(tail)}")
    os.replace(partial, done)
    print(f"root file system built in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return done


CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def trust_this_network(root: Path) -> None:
    """The board trusts the certificate authorities this machine trusts, pip included (a network whose egress
    re-signs TLS, as some CI sandboxes do, is then reachable from the board as from here)."""
    if CA_BUNDLE.is_file():
        shutil.copyfile(CA_BUNDLE, root / CA_BUNDLE.relative_to("/"))
        (root / "etc" / "pip.conf").write_text(f"[global]\ncert = {CA_BUNDLE}\n")


@contextmanager
def running_board(work: Path) -> Iterator[SSHServer]:
    """The emulated board's sshd, with /proc mounted in its root file system while it runs. /sys stays empty: with
    the host's CPU topology there, ONNX Runtime's cpuinfo crashes under qemu-user (it reads x86 caches for an Arm
    CPU); without it, ONNX Runtime warns and runs."""
    root = rootfs()
    trust_this_network(root)
    proc = root / "proc"
    mounted = subprocess.run(["mount", "-t", "proc", "proc", str(proc)], capture_output=True).returncode == 0
    try:
        with running_sshd(work, chroot=root) as server:
            yield server
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(proc)], capture_output=True)


@pytest.fixture(scope="session")
def arm64_board(tmp_path_factory):
    require_openssh()
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    with running_board(tmp_path_factory.mktemp("arm64")) as server:
        yield server


if __name__ == "__main__":  # python -m tests.arm64_board: an emulated aarch64 board for `pipeline bench --host`
    why = unavailable()
    if why:
        raise SystemExit(why)
    with tempfile.TemporaryDirectory() as tmp, running_board(Path(tmp)) as board:
        print("pipeline bench options:", " ".join(board.cli_options()), flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
