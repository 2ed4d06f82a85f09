.PHONY: run test unit lint bench setup

setup:
	scripts/setup.sh

run:
	scripts/run.sh

test: setup
	.venv/bin/ruff check .
	TCP_NODELAY=1 .venv/bin/python -m pytest tests

unit: setup
	.venv/bin/python -m pytest tests/unit

lint: setup
	.venv/bin/ruff check .

bench: setup
	TCP_NODELAY=1 .venv/bin/python bench/relay.py
