# Stockade — two commands: `make up` and `make test`. See README.md.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv system-deps helpers up test lint typecheck unit bench proto clean

# Idempotent and fast when nothing changed: reinstalls only when pyproject.toml is newer.
venv: system-deps $(STAMP) helpers

system-deps:
	@bash scripts/system-deps.sh

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --upgrade pip
	@$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

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

up: venv
	$(BIN)/stockade up

lint: venv
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/lint-imports

typecheck: venv
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/python -m pytest -q -p no:cacheprovider

# `make bench ARGS=gateway` runs one module (ARGS: module names, e.g. "broker shield").
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
	rm -rf $(VENV) .stockade .pytest_cache .mypy_cache .ruff_cache
