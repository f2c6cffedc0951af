# The two commands a newcomer needs (see README.md). Both install whatever is missing first.
.PHONY: run test install lint bench

run: install          ## install everything, then start the service and its web UI on data/inbox (Ctrl-C stops it)
	.venv/bin/kb serve

test: install         ## install everything, then lint, type-check and run the whole test suite
	.venv/bin/ruff check .
	.venv/bin/mypy
	.venv/bin/pytest

install:
	bash scripts/install.sh

bench: install        ## ingestion benchmark on ../shared/bench/docs/debian
	.venv/bin/python bench/ingest.py
