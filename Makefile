# MobileNetV2 data-parallel trainer — build, test, benchmark.
# `make test` and `make demo` work on a fresh Debian machine with Swift: `deps` installs the rest.

SWIFT       ?= swift
CONFIG      ?= release
# Release tests: numerical tests are 10-100x slower in debug builds.
SWIFT_FLAGS ?= -c $(CONFIG)
DEB_PACKAGES = libturbojpeg0-dev libzmq3-dev libopenblas-dev pkg-config
# Python packages the interop tests use (checkpoints read back by Python's safetensors).
PY_PACKAGES  = numpy safetensors
BENCH_PY    ?= $(HOME)/bench-venv/bin/python

.PHONY: all deps build test bench clean

all: build

# Installs missing Debian and Python packages; silent when everything is present.
deps:
	@missing=""; for p in $(DEB_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi
	@python3 -c "import numpy, safetensors" 2>/dev/null || { \
	  echo "installing Python packages: $(PY_PACKAGES)"; \
	  python3 -m pip install --quiet --disable-pip-version-check $(PY_PACKAGES) 2>&1 | grep -v "^WARNING: Running pip as" || true; }

build: deps
	$(SWIFT) build $(SWIFT_FLAGS)

test: deps
	$(SWIFT) build $(SWIFT_FLAGS) --build-tests
	$(SWIFT) test $(SWIFT_FLAGS) --skip-build

# Training-step throughput beside PyTorch (../shared/baselines/torch_train_step.py --channels-last).
bench: build
	$(SWIFT) run $(SWIFT_FLAGS) --skip-build bench train --threads 2 --python $(BENCH_PY)

clean:
	rm -rf .build
