# Two entry points: `make demo` (set up, then run the pipeline for a Raspberry Pi 4) and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
TARGET ?= raspberry-pi-4

.PHONY: demo test setup data clean

demo: setup
	$(VENV)/bin/pipeline run --target $(TARGET)

test: setup
	$(VENV)/bin/python -m pytest -q

setup: data $(VENV)/.installed

# Fashion-MNIST (MIT) from Debian's package, installed only where it is absent.
data:
	@[ -d /usr/share/datasets/fashion-mnist ] || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q dataset-fashion-mnist; }

# torch==2.13.0 first: the CPU wheel, so that nothing pulls a CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q torch==2.13.0
	$(VENV)/bin/pip install -q -e ".[test]"
	touch $@

clean:
	rm -rf out
