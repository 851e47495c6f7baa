# The two commands a newcomer runs (see README.md). Both set up .venv themselves.
.PHONY: demo test test-all setup bench

setup:
	bash scripts/setup_env.sh

demo: setup
	.venv/bin/python -m dalle2_pytorch.demo.run --output demo_output

test: setup
	bash scripts/run_tests.sh

test-all: setup
	RUN_HEAVY=1 bash scripts/run_tests.sh

bench: setup
	.venv/bin/python benchmarks/bench_api.py
