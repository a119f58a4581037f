# Every target sets up first (scripts/setup.sh is idempotent and quick once done).
PY := .venv/bin/python

.PHONY: setup demo penalty-demo test test-cuda-emu bench clean
setup:
	@scripts/setup.sh

# The main job: train the demo translation model on the built-in corpus and print its test BLEU.
demo: setup
	$(PY) -m l2fast train

# Penalty and gradient over a Transformer-base model's parameters, naive vs l2fast, timed.
penalty-demo: setup
	$(PY) examples/quick_demo.py

# Every test, the slow ones too (a plain `pytest` leaves out those marked slow: the quick loop).
test: setup
	$(PY) -m pytest -q -m ""

# The CUDA ops' device code run on the CPU by the host SIMT harness (csrc/emu/), under ASan and
# UBSan, against l2fast/reference.py. Python is not built with ASan, so its runtime is preloaded.
ASAN_RUNTIME = $(shell $${CXX:-c++} -print-file-name=libasan.so)
test-cuda-emu: setup
	$(PY) csrc/emu/build.py
	L2FAST_EMU_DIR=build/emu LD_PRELOAD=$(ASAN_RUNTIME) \
	ASAN_OPTIONS=detect_leaks=0:detect_odr_violation=0:alloc_dealloc_mismatch=0 \
	UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	$(PY) -m pytest -q -p no:cacheprovider tests/ops/test_cuda_emu.py

bench: setup
	cd bench && ../$(PY) bench_ops.py

clean:
	rm -rf build .venv l2fast/_C*.so *.egg-info
