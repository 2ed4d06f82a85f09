.PHONY: run test unit lint bench setup

setup:
	scripts/setup.sh

run:
	scripts/run.sh

test: setup
	.venv/bin/ruff check .
	.venv/bin/mypy
	.venv/bin/python scripts/import_rules.py
	TCP_NODELAY=1 .venv/bin/python -m pytest tests
	scripts/trixie.sh test

unit: setup
	.venv/bin/python -m pytest tests/unit

lint: setup
	.venv/bin/ruff check .
	.venv/bin/mypy
	.venv/bin/python scripts/import_rules.py

bench: setup
	mkdir -p bench/results
	for b in relay isolation contours deid plans_index harvest dvh_conventions dvh_truth ui routes transform; do \
	  TCP_NODELAY=1 .venv/bin/python bench/$$b.py > bench/results/$$b.json || exit 1; \
	  .venv/bin/python bench/record.py $$b bench/results/$$b.json || exit 1; done
