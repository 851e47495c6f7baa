# The two commands a newcomer runs (see README.md). Both set up .venv themselves.
.PHONY: demo test test-all setup browser bench

setup:
	bash scripts/setup_env.sh

# Debian's chromium for the web page's browser test (skipped when /usr/bin/chromium exists)
browser:
	bash scripts/install_browser.sh

# extra arguments for the demo, e.g. make demo DEMO_ARGS="--seed 1"
DEMO_ARGS ?=

demo: setup
	.venv/bin/python -m dalle2_pytorch.demo.run --output demo_output $(DEMO_ARGS)

test: setup browser
	bash scripts/run_tests.sh

test-all: setup browser
	RUN_HEAVY=1 bash scripts/run_tests.sh

bench: setup
	.venv/bin/python benchmarks/bench_api.py
