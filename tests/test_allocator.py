"""The pipeline command's allocator: jemalloc where the system has it, switched off on request, memory released."""
import os
import subprocess
import sys

import pytest

from pipeline.allocator import ENV, jemalloc_environment, jemalloc_library

PROBE = "from pipeline.allocator import name, release; release(); print(name())"


def test_the_command_reruns_itself_on_jemalloc_once_and_not_when_asked_for_the_system_malloc():
    if jemalloc_library() is None:
        pytest.skip("no jemalloc on this system (make setup installs Debian's libjemalloc2)")
    environment = jemalloc_environment({k: v for k, v in os.environ.items() if k not in (ENV, "LD_PRELOAD")})
    assert "jemalloc" in environment["LD_PRELOAD"] and "dirty_decay_ms:-1" in environment["MALLOC_CONF"]
    assert jemalloc_environment(environment) is None  # already on it: no second re-execution
    assert jemalloc_environment({**os.environ, ENV: "system"}) is None
    on = subprocess.run([sys.executable, "-c", PROBE], env=environment, capture_output=True, text=True, check=True)
    off = subprocess.run([sys.executable, "-c", PROBE], env={k: v for k, v in os.environ.items() if k != "LD_PRELOAD"},
                         capture_output=True, text=True, check=True)
    assert (on.stdout.strip(), off.stdout.strip()) == ("jemalloc", "system malloc")


def test_the_command_rerun_on_jemalloc_does_its_work():
    done = subprocess.run([sys.executable, "-m", "pipeline", "targets", "list"], capture_output=True, text=True,
                          env={k: v for k, v in os.environ.items() if k not in (ENV, "LD_PRELOAD")}, timeout=120)
    assert done.returncode == 0 and "raspberry-pi-4" in done.stdout, done.stderr
