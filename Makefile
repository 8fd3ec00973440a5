# Stockade — two commands: `make up` and `make test`. See README.md.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: venv venv-runtime system-deps helpers console-assets up test lint typecheck unit bench proto clean lock sbom

# Installs are locked: every package (ours excepted) comes from a lock file with hashes, installed
# with pip's --require-hashes, then Stockade itself with --no-deps (no build isolation: the build
# tools come from their own lock). `make up` installs the runtime set only; `make venv` (and so
# `make test`) the dev set, which pins the runtime packages at the same versions.
# Idempotent and fast when nothing changed: reinstalls only when a lock or pyproject.toml is newer.
LOCK_RUNTIME := requirements/runtime.lock
LOCK_DEV := requirements/dev.lock
LOCK_BUILD := requirements/build.lock
RUNTIME_STAMP := $(VENV)/.runtime-installed
DEV_STAMP := $(VENV)/.dev-installed
PIP_LOCKED := $(BIN)/python -m pip install -q --require-hashes --only-binary :all: -r
COMPILE := $(BIN)/pip-compile -q --generate-hashes --strip-extras --no-emit-index-url --no-emit-find-links

venv: system-deps $(DEV_STAMP) helpers console-assets

venv-runtime: system-deps $(RUNTIME_STAMP) helpers console-assets

system-deps:
	@bash scripts/system-deps.sh

# The static credential helper (Rust, standard library only): a static-pie binary that
# stockade.helpers.static_helper() finds in the package's bin/ (ignored by git).
CARGO ?= $(shell command -v cargo 2>/dev/null || echo $(HOME)/.cargo/bin/cargo)
HELPER_SRC := src/stockade/helpers/rust
HELPER_TARGET := x86_64-unknown-linux-gnu
HELPER_BIN := src/stockade/helpers/bin/stockade-credential-helper

helpers: $(HELPER_BIN)

$(HELPER_BIN): $(HELPER_SRC)/Cargo.toml $(wildcard $(HELPER_SRC)/src/*.rs)
	cd $(HELPER_SRC) && RUSTFLAGS='-C target-feature=+crt-static' $(CARGO) build -q --release \
	  --offline --target $(HELPER_TARGET) --target-dir $(abspath build/helpers)
	@mkdir -p $(dir $@)
	install -m 0755 build/helpers/$(HELPER_TARGET)/release/stockade-credential-helper $@

# The web console's browser assets (htmx, asciinema-player): installed from the npm registry with
# the committed lock (npm ci, no install scripts) into build/console-npm, and their built bundles
# copied into the package's static/vendor/ (ignored by git), from where the broker serves them:
# no page loads anything from another origin, and no other project's code is committed here.
CONSOLE_NPM := build/console-npm
CONSOLE_VENDOR := src/stockade/console/static/vendor
CONSOLE_FILES := htmx.org/dist/htmx.min.js asciinema-player/dist/bundle/asciinema-player.min.js \
  asciinema-player/dist/bundle/asciinema-player.css

console-assets: $(CONSOLE_VENDOR)/.installed

$(CONSOLE_VENDOR)/.installed: web/console/package.json web/console/package-lock.json
	@mkdir -p $(CONSOLE_NPM) $(CONSOLE_VENDOR)
	cp web/console/package.json web/console/package-lock.json $(CONSOLE_NPM)/
	cd $(CONSOLE_NPM) && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
	for f in $(CONSOLE_FILES); do install -m 0644 $(CONSOLE_NPM)/node_modules/$$f $(CONSOLE_VENDOR)/; done
	@touch $@

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(RUNTIME_STAMP): $(LOCK_RUNTIME) $(LOCK_BUILD) pyproject.toml | $(BIN)/python
	@$(PIP_LOCKED) $(LOCK_BUILD)
	@$(PIP_LOCKED) $(LOCK_RUNTIME)
	@$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	@touch $@

$(DEV_STAMP): $(LOCK_DEV) $(LOCK_BUILD) pyproject.toml | $(BIN)/python
	@$(PIP_LOCKED) $(LOCK_BUILD)
	@$(PIP_LOCKED) $(LOCK_DEV)
	@$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	@touch $@ $(RUNTIME_STAMP)

up: venv-runtime
	$(BIN)/stockade up

# Regenerates the lock files from pyproject.toml (run after changing a dependency).
lock: venv
	$(COMPILE) --output-file $(LOCK_RUNTIME) pyproject.toml
	$(COMPILE) --allow-unsafe --extra dev --constraint $(LOCK_RUNTIME) --output-file $(LOCK_DEV) pyproject.toml
	$(COMPILE) --allow-unsafe --output-file $(LOCK_BUILD) requirements/build.in

# The CycloneDX SBOM of Stockade's own runtime environment: a fresh venv from the runtime lock,
# described by cyclonedx-bom, validated against CycloneDX 1.6.
SBOM_VENV := build/runtime-venv
sbom: venv
	rm -rf $(SBOM_VENV)
	$(PYTHON) -m venv $(SBOM_VENV)
	$(SBOM_VENV)/bin/python -m pip install -q --require-hashes --only-binary :all: -r $(LOCK_BUILD)
	$(SBOM_VENV)/bin/python -m pip install -q --require-hashes --only-binary :all: -r $(LOCK_RUNTIME)
	$(SBOM_VENV)/bin/python -m pip install -q --no-deps --no-build-isolation .
	$(BIN)/cyclonedx-py environment --pyproject pyproject.toml --spec-version 1.6 --output-format JSON \
	  --output-reproducible --validate -o build/stockade-runtime.cdx.json $(SBOM_VENV)/bin/python
	@echo "wrote build/stockade-runtime.cdx.json"

lint: venv
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/lint-imports

typecheck: venv
	$(BIN)/mypy

# Four workers, a test module per worker at a time (most tests wait on real servers and
# processes: on two cores, four workers keep both busy); then, alone, the modules that mount on
# the host (Podman Pods, loop-mounted homes): a sandbox session started meanwhile on another
# worker would copy those mounts into its namespace and keep them busy. Both parts always run.
PYTEST := $(BIN)/python -m pytest -q -p no:cacheprovider
test: lint typecheck
	@rc=0; \
	$(PYTEST) -n 4 --dist loadfile -m "not serial" || rc=$$?; \
	$(PYTEST) -m serial || rc=$$?; \
	exit $$rc

bench: venv
	$(BIN)/python -m bench $(ARGS)

# Regenerates the gRPC modules from proto/ (committed; run after editing a .proto).
proto: venv
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m grpc_tools.protoc -Iproto --python_out=src/stockade/rpc/_gen \
	  --grpc_python_out=src/stockade/rpc/_gen --mypy_out=src/stockade/rpc/_gen \
	  --mypy_grpc_out=src/stockade/rpc/_gen proto/*.proto
	sed -i -E 's/^import (\w+_pb2) as/from . import \1 as/; s/^import (\w+_pb2)$$/from . import \1/' src/stockade/rpc/_gen/*_grpc.py src/stockade/rpc/_gen/*_grpc.pyi
	# The generated base servicer answers UNIMPLEMENTED for methods a servicer does not define;
	# it raises NotImplementedError after setting that status. Any exception does the same, and ours
	# keeps the tree free of stub markers (every method is implemented in stockade.rpc).
	sed -i "s/raise NotImplementedError('Method not implemented!')/raise RuntimeError('method not implemented by this servicer')/" src/stockade/rpc/_gen/*_grpc.py

clean:
	rm -rf $(VENV) build .stockade .pytest_cache .mypy_cache .ruff_cache
