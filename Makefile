# Every target sets up first (scripts/setup.sh is idempotent and quick once done).
PY := .venv/bin/python

.PHONY: setup demo test bench clean
setup:
	@scripts/setup.sh

demo: setup
	$(PY) examples/quick_demo.py

test: setup
	$(PY) -m pytest -q

bench: setup
	cd bench && ../$(PY) bench_ops.py

clean:
	rm -rf build .venv l2fast/_C*.so *.egg-info
