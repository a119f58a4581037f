# Every target sets up first (scripts/setup.sh is idempotent and quick once done).
PY := .venv/bin/python

.PHONY: setup demo penalty-demo test bench clean
setup:
	@scripts/setup.sh

# The main job: train the demo translation model on the built-in corpus and print its test BLEU.
demo: setup
	$(PY) -m l2fast train

# Penalty and gradient over a Transformer-base model's parameters, naive vs l2fast, timed.
penalty-demo: setup
	$(PY) examples/quick_demo.py

test: setup
	$(PY) -m pytest -q

bench: setup
	cd bench && ../$(PY) bench_ops.py

clean:
	rm -rf build .venv l2fast/_C*.so *.egg-info
