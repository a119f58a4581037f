"""The CUDA ops, device code included, run by the host SIMT harness (csrc/emu/) against l2fast.reference,
and the anchored penalties against the native CPU backend (torch.ops.l2fast on CPU tensors).

`make test-cuda-emu` builds the harness under ASan/UBSan and runs this file; elsewhere it skips. The
case list follows tests/ops/test_ops.py; sizes are kept small where they would only repeat a block
(every simulated block runs 256 real threads).
"""
import gc
import os
import subprocess
import sys

import pytest
import torch

from l2fast import reference
from conftest import DTYPES, random_tensors, ulp_tol
from test_fold_order import BIG, CPU_CHUNK, chunk_pattern, fold_block_order, left_to_right

EMU_DIR = os.environ.get("L2FAST_EMU_DIR")
if not EMU_DIR:
    pytest.skip("the SIMT harness runs under `make test-cuda-emu`", allow_module_level=True)
sys.path.insert(0, EMU_DIR)
import l2fast_emu  # noqa: E402

OPS = ("sq_norm", "l1_norm", "penalty", "penalty_grad", "add_penalty_grad_", "decay_", "adam_step_", "sgd_step_")


class Harness:
    """l2fast_emu with its ops called as torch.ops.l2fast's are: the module binds the entry points, whose
    parameters are the schema's (csrc/l2fast.cpp) in its order, by position only; here each op also takes
    them by name, and the schema's defaults (the anchors' trailing arguments) for those left out."""

    def __init__(self, module):
        self._module = module
        for name in OPS:
            setattr(self, name, self._schema_call(name))

    def __getattr__(self, name):
        return getattr(self._module, name)

    def _schema_call(self, name):
        bound = getattr(self._module, name)
        arguments = getattr(torch.ops.l2fast, name).default._schema.arguments

        def call(*args, **kwargs):
            rest = []
            for a in arguments[len(args) :]:
                if a.name in kwargs:
                    rest.append(kwargs.pop(a.name))
                else:
                    assert a.has_default_value(), f"{name}: no {a.name} given"
                    rest.append(a.default_value)
            assert not kwargs, f"{name}: no parameters {sorted(kwargs)}"
            return bound(*args, *rest)

        return call


emu = Harness(l2fast_emu)
native = torch.ops.l2fast
CHUNK = emu.CHUNK
# Every tail length modulo every pack width (4 float32, 2 float64, 8 half types), alone and after
# whole chunks; sizes around the chunk size.
TAILS = list(range(1, 18)) + [CHUNK + r for r in range(8)] + [CHUNK - 1, 2 * CHUNK + 5]
SIZES = {
    "one": [1],
    "mixed": [0, 1, 7, 31, 1000, 32769, 100003],
    "tails": TAILS,
}


def sum_tol(dtype):
    return 1e-12 if dtype == torch.float64 else 2e-7


def assert_sums_close(got, want, dtype):
    assert got.dtype == want.dtype and got.shape == want.shape
    torch.testing.assert_close(got.double(), want.double(), rtol=sum_tol(dtype), atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sizes", SIZES.values(), ids=SIZES.keys())
@pytest.mark.parametrize("per_tensor", [False, True])
def test_norms_match_reference(dtype, sizes, per_tensor):
    xs = random_tensors(sizes, dtype, "cpu")
    coeffs = [0.5 + (i % 3) for i in range(len(xs))]
    for name in ("sq_norm", "l1_norm"):
        assert_sums_close(getattr(emu, name)(xs, coeffs, per_tensor), getattr(reference, name)(xs, coeffs, per_tensor), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_large_tensor_folds_many_chunks(dtype):
    """65 chunks: more partials than a warp has lanes, so the finish kernel's whole block folds them."""
    xs = random_tensors([1_048_583], dtype, "cpu", seed=11)
    assert_sums_close(emu.sq_norm(xs, [1.0], True), reference.sq_norm(xs, [1.0], True), dtype)
    assert_sums_close(emu.penalty(xs, [0.3], [0.1]), reference.penalty(xs, [0.3], [0.1]), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sizes", [SIZES["mixed"], SIZES["tails"]], ids=["mixed", "tails"])
def test_add_penalty_grad_matches_reference(dtype, sizes):
    params = random_tensors(sizes, dtype, "cpu", seed=1)
    grads = random_tensors(sizes, dtype, "cpu", seed=2)
    l2 = [0.0 if i % 4 == 0 else 0.1 * (1 + i % 5) for i in range(len(params))]
    l1 = [0.0 if i % 3 == 0 else 0.01 * (1 + i % 2) for i in range(len(params))]
    want_grads = [g.clone() for g in grads]
    want = reference.add_penalty_grad_(params, want_grads, l2, l1)
    assert_sums_close(emu.add_penalty_grad_(params, grads, l2, l1), want, dtype)
    for g, w in zip(grads, want_grads):
        torch.testing.assert_close(g, w, rtol=ulp_tol(dtype), atol=ulp_tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_penalty_grad_and_decay_match_reference(dtype):
    params = random_tensors(SIZES["tails"], dtype, "cpu", seed=3)
    for scale in (torch.tensor(1.5), torch.tensor(-0.25, dtype=torch.float64)):
        got = emu.penalty_grad(params, scale, [0.2], [0.03])
        for g, w in zip(got, reference.penalty_grad(params, scale, [0.2], [0.03])):
            torch.testing.assert_close(g, w, rtol=ulp_tol(dtype), atol=ulp_tol(dtype))
    factors = [0.001 * i for i in range(len(params))]
    l2 = [0.0 if i % 3 == 0 else 0.1 * i for i in range(len(params))]
    decayed = [p.clone() for p in params]
    value = emu.decay_(decayed, factors, l2)
    assert_sums_close(value, reference.decay_(params, factors, l2), dtype)
    for got_p, want_p in zip(decayed, params):
        torch.testing.assert_close(got_p, want_p, rtol=ulp_tol(dtype), atol=0)


def test_launch_tables_hold_more_tensors_without_anchors():
    """Tensors per launch table are derived from the size of a table's rows: a plain call's rows leave
    the anchor records out, so its tables hold more tensors than an anchored call's, for the ops over
    TensorMeta and for the steps alike."""
    assert emu.TENSORS_PER_LAUNCH > emu.ANCHORED_TENSORS_PER_LAUNCH > emu.STEP_TENSORS_PER_LAUNCH
    assert emu.STEP_TENSORS_PER_LAUNCH > emu.ANCHORED_STEP_TENSORS_PER_LAUNCH > 0


def test_many_tensors_span_several_launch_tables():
    """5,000 tensors: several launch tables; one in seven takes part, so per-tensor zeros are written too."""
    xs = random_tensors([1 + i % 97 for i in range(5000)], torch.float32, "cpu", seed=4)
    coeffs = [0.0 if i % 7 else 1.0 + i % 3 for i in range(len(xs))]
    for name, per_tensor in (("sq_norm", True), ("l1_norm", False)):
        got = getattr(emu, name)(xs, coeffs, per_tensor)
        assert_sums_close(got, getattr(reference, name)(xs, coeffs, per_tensor), torch.float32)


def test_many_plain_tensors_all_written():
    """Tensors enough for three plain launch tables (plus two), all written by add_penalty_grad_ and decay_,
    against the reference."""
    n = 2 * emu.TENSORS_PER_LAUNCH + 2
    sizes = [1 + (i * 37) % 61 for i in range(n)]
    params = random_tensors(sizes, torch.float32, "cpu", seed=5)
    grads = random_tensors(sizes, torch.float32, "cpu", seed=6)
    l2 = [0.1 * (1 + i % 3) for i in range(n)]
    want_grads = _clones(grads)
    want = reference.add_penalty_grad_(params, want_grads, l2, [0.01])
    assert_sums_close(emu.add_penalty_grad_(params, grads, l2, [0.01]), want, torch.float32)
    for g, w in zip(grads, want_grads):
        torch.testing.assert_close(g, w, rtol=ulp_tol(torch.float32), atol=ulp_tol(torch.float32))
    factors = [0.001 * (i % 5) for i in range(n)]
    decayed = _clones(params)
    assert_sums_close(emu.decay_(decayed, factors, l2), reference.decay_(params, factors, l2), torch.float32)
    for got_p, want_p in zip(decayed, params):
        torch.testing.assert_close(got_p, want_p, rtol=ulp_tol(torch.float32), atol=0)


def test_many_tensors_all_written():
    """Tensors enough for three anchored launch tables, all written, anchored from the middle of the second
    table on: the call's tables carry the anchor records, and the first, in which no tensor reads its
    anchor, runs the plain chunk kernel over its tensors in plain rows, the others the anchored one
    (unanchored tensors beside anchored ones in the second). Against the native CPU backend (_anchored,
    below)."""
    per_table = emu.ANCHORED_TENSORS_PER_LAUNCH
    n = 2 * per_table + 100
    sizes = [1 + (i * 37) % 61 for i in range(n)]
    params, anchors, fisher = _anchored(sizes, torch.float64, torch.bfloat16, True, seed=5)
    grads = random_tensors(sizes, torch.float64, "cpu", seed=6)
    first_anchored = per_table * 3 // 2
    kw = dict(anchors=anchors, fisher=fisher, l2_sp=[0.0 if i < first_anchored else 0.3 for i in range(n)])
    want_grads = _clones(grads)
    want = native.add_penalty_grad_(params, want_grads, [0.1], [0.01], **kw)
    assert_sums_close(emu.add_penalty_grad_(params, grads, [0.1], [0.01], **kw), want, torch.float64)
    assert_same_bits(grads, want_grads)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("offset, grad_offset", [(1, 1), (2, 2), (3, 3), (1, 2), (3, 0)])
def test_misaligned_views(dtype, offset, grad_offset):
    """Views 1..3 elements into their storage. Misaligned alike, each chunk peels the elements before
    the shared 16-byte boundary and moves the rest in packs; misaligned differently, no packs
    (load_pack checks the alignment of every pack)."""
    n = CHUNK + 13
    base_w = random_tensors([n + offset], dtype, "cpu", seed=7)[0]
    base_g = random_tensors([n + grad_offset], dtype, "cpu", seed=8)[0]
    before = base_g[:grad_offset].clone()
    w, g = base_w[offset:], base_g[grad_offset:]
    want_g = g.clone()
    want = reference.add_penalty_grad_([w], [want_g], [0.3], [0.02])
    assert_sums_close(emu.sq_norm([w], [1.0], False), reference.sq_norm([w], [1.0], False), dtype)
    assert_sums_close(emu.add_penalty_grad_([w], [g], [0.3], [0.02]), want, dtype)
    torch.testing.assert_close(g, want_g, rtol=ulp_tol(dtype), atol=ulp_tol(dtype))
    assert torch.equal(base_g[:grad_offset], before)  # the elements before the view are untouched


def test_mixed_dtypes_in_one_call():
    xs = [t for dt in DTYPES for t in random_tensors([100, CHUNK + 3], dt, "cpu", seed=9)]
    for per_tensor in (False, True):
        got = emu.sq_norm(xs, [1.0], per_tensor)
        assert got.dtype == torch.float64
        torch.testing.assert_close(got, reference.sq_norm(xs, [1.0], per_tensor), rtol=1e-12, atol=0)


def test_zero_coefficient_tensors_are_not_read():
    """Tensors whose coefficients are zero are ASan-poisoned: any read or write of them aborts."""
    xs = random_tensors([64, 1000, 4096, 33], torch.float32, "cpu", seed=10)
    grads = random_tensors([64, 1000, 4096, 33], torch.float32, "cpu", seed=11)
    skipped = [xs[1], xs[3], grads[1], grads[3]]
    l2 = [0.5, 0.0, 0.25, 0.0]
    coeffs = [1.0, 0.0, 2.0, 0.0]
    want_norm = reference.sq_norm(xs, coeffs, True)
    want_grads = [g.clone() for g in grads]
    want = reference.add_penalty_grad_(xs, want_grads, l2, [0.0])
    emu.poison(skipped)
    try:
        got_norm = emu.sq_norm(xs, coeffs, True)
        got = emu.add_penalty_grad_(xs, grads, l2, [0.0])
        emu.decay_(xs[:2], [0.5, 0.0], [0.0, 0.0])  # a zero factor and no L2: not visited either
    finally:
        emu.unpoison(skipped)
    assert_sums_close(got_norm, want_norm, torch.float32)
    assert_sums_close(got, want, torch.float32)
    assert all(torch.equal(g, w) for g, w in zip(grads, want_grads))


def test_poisoning_catches_a_read():
    """The control for the test above: a poisoned tensor that the op does read aborts the process."""
    code = (
        f"import sys, torch; sys.path.insert(0, {EMU_DIR!r}); import l2fast_emu as emu\n"
        "x = torch.ones(256); emu.poison([x]); emu.sq_norm([x], [1.0], False)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode != 0
    assert "use-after-poison" in run.stderr


def test_nan_and_inf_propagate():
    x = [torch.ones(100), torch.ones(70000)]
    x[1][12345] = float("nan")
    assert torch.isnan(emu.sq_norm(x, [1.0], False))
    assert emu.sq_norm(x, [1.0], True)[0].item() == 100.0
    x[1][12345] = float("inf")
    assert torch.isinf(emu.l1_norm(x, [1.0], False))
    g = [torch.zeros(100), torch.zeros(70000)]
    assert torch.isinf(emu.add_penalty_grad_(x, g, [0.0], [0.5]))
    assert g[1][12345].item() == 0.5  # L1 alone: sign(inf) * l1, not 0 * inf


def test_dense_non_contiguous_layouts():
    w = torch.randn(8, 3, 5, 5).to(memory_format=torch.channels_last)
    t = torch.randn(300, 200).t()
    assert not w.is_contiguous() and not t.is_contiguous()
    torch.testing.assert_close(emu.sq_norm([w, t], [1.0], False), reference.sq_norm([w, t], [1.0], False))
    g = torch.randn_like(w)
    want = g + 0.1 * w
    emu.add_penalty_grad_([w], [g], [0.1], [0.0])
    torch.testing.assert_close(g, want)


def test_empty_lists_and_zero_size_tensors():
    """No chunk: the launch path makes no zero-block launch (the harness aborts on one, as CUDA
    refuses it) and still writes zeros."""
    for per_tensor in (False, True):
        result = torch.full((0,) if per_tensor else (), float("nan"))
        emu.kernels_reduce([], [1.0], [0.0], per_tensor, result)
        assert per_tensor or result.item() == 0.0
    result = torch.full((), float("nan"), dtype=torch.float64)
    emu.kernels_add_penalty_grad([], [], [1.0], [1.0], result)
    assert result.item() == 0.0
    emu.kernels_penalty_grad([], [], torch.tensor(1.0), [1.0], [1.0])
    result = torch.full((), float("nan"))
    emu.kernels_decay([], [0.5], [1.0], result)
    assert result.item() == 0.0
    empty = [torch.empty(0), torch.empty(0, 3)]
    assert emu.sq_norm(empty, [1.0], False).item() == 0.0
    assert emu.l1_norm(empty, [1.0], True).tolist() == [0.0, 0.0]
    assert emu.add_penalty_grad_(empty, [torch.empty_like(t) for t in empty], [1.0], [0.0]).item() == 0.0
    assert emu.decay_(empty, [0.1], [1.0]).item() == 0.0
    assert [t.shape for t in emu.penalty_grad(empty, torch.tensor(1.0), [1.0], [0.0])] == [(0,), (0, 3)]
    assert emu.sq_norm([torch.ones(3)], [0.0], False).item() == 0.0  # nothing to visit at all


def test_planning_beyond_2_to_the_31_elements():
    """Block-to-chunk planning (the chunk kernel's own locate_chunk) for a tensor of 2^31 + 3 elements."""
    big = 2**31 + 3
    lengths = [5, big, 0, CHUNK + 1]
    rows = emu.plan_blocks(lengths)
    assert rows.dtype == torch.int64
    chunks_of_big = (big + CHUNK - 1) // CHUNK
    assert rows.shape[0] == 1 + chunks_of_big + 2
    for t, n in enumerate(lengths):
        mine = rows[rows[:, 2] == t]
        assert int(mine[:, 4].sum()) == n
        if n:  # chunks in order, each starting where the last ended, none longer than CHUNK
            assert torch.equal(mine[:, 3], torch.arange(mine.shape[0], dtype=torch.int64) * CHUNK)
            assert int(mine[:, 4].max()) <= CHUNK and int(mine[:, 4].min()) >= 1
    last = rows[rows[:, 2] == 1][-1].tolist()
    assert last[3] == (chunks_of_big - 1) * CHUNK >= 2**31 and last[4] == big - last[3] == 3
    assert torch.equal(rows[:, 1], torch.arange(rows.shape[0]))  # one launch: blocks 0, 1, ...


@pytest.mark.parametrize("anchored", [False, True], ids=["plain", "anchored"])
def test_planning_splits_launch_tables(anchored):
    """A plain call's tables hold TENSORS_PER_LAUNCH tensors each, an anchored call's fewer (their rows
    carry the anchor records)."""
    per_table = emu.ANCHORED_TENSORS_PER_LAUNCH if anchored else emu.TENSORS_PER_LAUNCH
    lengths = [1] * (2 * per_table + 1)
    rows = emu.plan_blocks(lengths, anchored)
    assert rows[:, 0].tolist() == [0] * per_table + [1] * per_table + [2]
    assert torch.equal(rows[:, 2], torch.arange(len(lengths)))


def test_capture_and_replay_read_the_captured_tensors():
    """A captured op replays with its own copy of the metadata: after the host memory the call used
    is freed and reused, a replay still reads and writes the captured tensors."""
    xs = random_tensors([1000, CHUNK + 7, 3], torch.float32, "cpu", seed=12)
    params = random_tensors([500, 70], torch.float32, "cpu", seed=13)
    grads = [torch.zeros_like(p) for p in params]
    emu.capture_begin()
    try:
        norms = emu.sq_norm(xs, [1.0], True)
        value = emu.add_penalty_grad_(params, grads, [0.5], [0.0])
    finally:
        launches = emu.capture_end()
    assert launches == 2 + 3  # per op: chunk and values kernels; the scalar op adds a total
    assert all(not g.any() for g in grads)  # nothing ran during capture
    for _ in range(2):
        for t in xs + params:
            t.normal_()
        for g in grads:
            g.zero_()
        garbage = [torch.full((4096,), 7.0) for _ in range(64)]  # reuse freed host memory
        del garbage
        gc.collect()
        emu.replay()
        torch.testing.assert_close(norms, reference.sq_norm(xs, [1.0], True), rtol=2e-7, atol=0)
        want_grads = [torch.zeros_like(p) for p in params]
        want = reference.add_penalty_grad_(params, want_grads, [0.5], [0.0])
        torch.testing.assert_close(value, want, rtol=2e-7, atol=0)
        for g, w in zip(grads, want_grads):
            torch.testing.assert_close(g, w)


def test_bitwise_repeatable():
    xs = random_tensors(SIZES["mixed"], torch.float32, "cpu", seed=14)
    first = emu.sq_norm(xs, [1.0], False)
    assert torch.equal(first, emu.sq_norm(xs, [1.0], False))


def test_finish_kernels_fold_in_the_shared_order():
    """Tensors of 20 chunks (folded by one warp), 65 and 300 (by the whole block; at 300 the first
    threads add two partials each) in one launch table: each value is fold.h's block order of its
    partials, bitwise, and equal to the CPU backend's on a tensor with the same partials (a CPU chunk
    is longer, so that tensor is longer)."""
    counts = [20, 65, 300]
    # bfloat16 keeps the CPU tensors small; an empty float64 tensor makes the results float64, in
    # which the sums 2^53 + k survive.
    empty64 = torch.zeros(0, dtype=torch.float64)
    gpu = [chunk_pattern(n, CHUNK, torch.bfloat16)[0] for n in counts] + [empty64]
    cpu = [chunk_pattern(n, CPU_CHUNK, torch.bfloat16)[0] for n in counts] + [empty64]
    partials = [[BIG] + [1.0] * (n - 1) for n in counts]
    want = [fold_block_order(p) for p in partials] + [0.0]
    assert all(w != left_to_right(p) for w, p in zip(want, partials))  # the cases tell the orders apart
    per_tensor = emu.l1_norm(gpu, [1.0], True)
    assert per_tensor.tolist() == want
    assert torch.equal(per_tensor, torch.ops.l2fast.l1_norm(cpu, [1.0], True))
    total = emu.l1_norm(gpu, [1.0], False)
    assert total.item() == fold_block_order(want)
    assert torch.equal(total, torch.ops.l2fast.l1_norm(cpu, [1.0], False))
    xs = [torch.tensor([BIG], dtype=torch.float64)] + [torch.ones(1, dtype=torch.float64)] * 300
    values = [BIG] + [1.0] * 300
    assert emu.l1_norm(xs, [1.0], False).item() == fold_block_order(values) != left_to_right(values)


# The optimizer steps (adam_step_, sgd_step_): two steps each (SGD's fresh buffer, then its update;
# Adam's counter at 1, then 2), with the GradScaler scale and the clip coefficient as device scalars
# (so the gradients are left unscaled and clipped); then a step with found_inf set, which must write
# nothing and leave the counters alone.
STEP_SIZES = [0, 1, 7, 1000, CHUNK + 9]  # zero-size, packs with tails, two chunks
STEP_TOL = {torch.float32: 1e-6, torch.float64: 1e-14, torch.float16: 1e-2, torch.bfloat16: 1e-2}


def _adam(impl, ps, gs, state, scalars, amsgrad=False, maximize=False):
    return impl.adam_step_(ps, gs, state[0], state[1], state[2] if amsgrad else [], state[3], [1e-2], [0.9],
                           [0.99], [1e-8], [0.0, 0.1, 0.0, 1e-2, 0.2], [1e-3], [0.0, 0.0, 1e-3, 0.0, 1e-3],
                           [0.1], maximize, *scalars)


def _sgd(impl, ps, gs, state, scalars, k, nesterov=False, momentum=True):
    return impl.sgd_step_(ps, gs, state[0] if momentum else [], [1e-2, 2e-2, 1e-2, 1e-2, 3e-2], [0.9], [0.1],
                          [int(k == 0)], [0.1], [0.0, 1e-3, 0.0, 0.0, 1e-3], [0.0], [0.1], nesterov, False, *scalars)


STEP_CASES = {
    "adam": lambda impl, ps, gs, st, sc, k: _adam(impl, ps, gs, st, sc),
    "adam-amsgrad-maximize": lambda impl, ps, gs, st, sc, k: _adam(impl, ps, gs, st, sc, amsgrad=True, maximize=True),
    "sgd-nesterov": lambda impl, ps, gs, st, sc, k: _sgd(impl, ps, gs, st, sc, k, nesterov=True),
    "sgd-plain": lambda impl, ps, gs, st, sc, k: _sgd(impl, ps, gs, st, sc, k, momentum=False),
}


def _step_run(impl, case, dtype, skip_last):
    params = random_tensors(STEP_SIZES, dtype, "cpu", seed=21)
    state = [random_tensors(STEP_SIZES, dtype, "cpu", seed=22 + j) for j in range(3)]
    state[1] = [s.abs() for s in state[1]]  # exp_avg_sq >= 0
    state.append([torch.tensor(float(k), dtype=torch.float32 if k else torch.float64) for k in range(len(params))])
    values, grads_after = [], []
    for k in range(3 if skip_last else 2):
        grads = [g * 64.0 for g in random_tensors(STEP_SIZES, dtype, "cpu", seed=30 + k)]
        found_inf = torch.tensor([float(k == 2)])
        scalars = (torch.tensor(64.0), found_inf, torch.tensor(0.75, dtype=torch.float64))
        values.append(STEP_CASES[case](impl, params, grads, state, scalars, k))
        grads_after += grads
    return params, state + [grads_after], values


# Every dtype for the two main rules; the variants in float32 and bfloat16 (the harness is slow).
STEP_RUNS = [(case, dtype) for case in ("adam", "sgd-nesterov") for dtype in DTYPES] + [
    (case, dtype) for case in ("adam-amsgrad-maximize", "sgd-plain") for dtype in (torch.float32, torch.bfloat16)
]


@pytest.mark.parametrize("case, dtype", STEP_RUNS)
def test_optimizer_steps_match_reference(case, dtype):
    got = _step_run(emu, case, dtype, skip_last=dtype == torch.float32)
    want = _step_run(reference, case, dtype, skip_last=dtype == torch.float32)
    tol = STEP_TOL[dtype]
    for got_list, want_list in zip([got[0]] + got[1], [want[0]] + want[1]):
        for g, w in zip(got_list, want_list):
            assert g.dtype == w.dtype
            scale = w.double().abs().max().item() if w.numel() else 0.0  # (exceptions abort under ASan)
            torch.testing.assert_close(g.double(), w.double(), rtol=tol, atol=tol * scale)
    for g, w in zip(got[2], want[2]):
        assert_sums_close(g, w, dtype)


def test_optimizer_step_skipped_by_found_inf_writes_nothing():
    params = random_tensors([CHUNK + 3], torch.float32, "cpu", seed=40)
    before = [p.clone() for p in params]
    grads = random_tensors([CHUNK + 3], torch.float32, "cpu", seed=41)
    grads_before = [g.clone() for g in grads]
    state = [[torch.zeros_like(p) for p in params] for _ in range(2)]
    steps = [torch.tensor(4.0)]
    value = emu.adam_step_(params, grads, *state, [], steps, [1e-2], [0.9], [0.99], [1e-8], [0.1], [0.0], [0.0], [0.1],
                           False, torch.tensor(8.0), torch.tensor(1.0), torch.tensor(0.5))
    assert torch.equal(params[0], before[0]) and steps[0].item() == 4.0 and torch.equal(grads[0], grads_before[0])
    assert not any(s.any() for lst in state for s in lst)
    assert_sums_close(value, reference.penalty(before, [0.1], [0.0]), torch.float32)


def test_optimizer_steps_span_several_launch_tables():
    """Adam and SGD steps over more tensors than two plain step tables hold (the counters advanced table by
    table), against the reference."""
    n = 2 * emu.STEP_TENSORS_PER_LAUNCH + 3
    sizes = [1 + (i * 37) % 61 for i in range(n)]
    runs = []
    for impl in (emu, reference):
        params = random_tensors(sizes, torch.float32, "cpu", seed=42)
        grads = random_tensors(sizes, torch.float32, "cpu", seed=43)
        state = [[torch.zeros_like(p) for p in params] for _ in range(2)]
        steps = [torch.tensor(float(i % 3)) for i in range(n)]
        l2 = [0.1 * (i % 2) for i in range(n)]
        values = [impl.adam_step_(params, grads, *state, [], steps, [1e-2], [0.9], [0.99], [1e-8], l2, [1e-3], [0.0],
                                  [0.1], False, None, None, None)]
        momentum = [torch.zeros_like(p) for p in params]
        values.append(impl.sgd_step_(params, grads, momentum, [1e-2], [0.9], [0.1], [1], l2, [0.0], [1e-3], [0.1],
                                     False, False, None, None, None))
        runs.append((values, params + state[0] + state[1] + momentum + steps))
    (got_values, got), (want_values, want) = runs
    for g, w in zip(got_values, want_values):
        assert_sums_close(g, w, torch.float32)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=STEP_TOL[torch.float32], atol=STEP_TOL[torch.float32] * w.abs().max().item())


def _view(t, offset):
    """t's values in a view `offset` elements into a larger storage."""
    base = torch.empty(t.numel() + offset, dtype=t.dtype)
    view = base[offset:]
    view.copy_(t)
    return view


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("state_offset", [1, 2], ids=["misaligned-alike", "misaligned-differently"])
def test_optimizer_step_over_misaligned_views(dtype, state_offset):
    """An Adam step whose params and grads sit one element into their storage and whose state sits
    state_offset elements in: alike, each chunk peels a prologue and moves the rest in packs;
    differently, every element is scalar. Both equal the reference."""
    sizes = [CHUNK + 9, 1000]
    runs = []
    for impl in (emu, reference):
        params = [_view(t, 1) for t in random_tensors(sizes, dtype, "cpu", seed=50)]
        grads = [_view(t, 1) for t in random_tensors(sizes, dtype, "cpu", seed=51)]
        state = [[_view(torch.zeros(n, dtype=dtype), state_offset) for n in sizes] for _ in range(2)]
        steps = [torch.tensor(0.0) for _ in sizes]
        value = impl.adam_step_(params, grads, *state, [], steps, [1e-2], [0.9], [0.99], [1e-8], [0.1], [1e-3], [0.0],
                                [0.1], False, torch.tensor(4.0), torch.tensor([0.0]), None)
        runs.append((value, params + grads + state[0] + state[1]))
    (got_value, got), (want_value, want) = runs
    assert_sums_close(got_value, want_value, dtype)
    for g, w in zip(got, want):
        torch.testing.assert_close(g.double(), w.double(), rtol=STEP_TOL[dtype], atol=STEP_TOL[dtype] * w.double().abs().max().item())


# The anchored penalties (L2-SP / EWC): every op that takes anchors, against the native CPU backend.
# Both compute each element with the shared math (csrc/math/) and without multiply-add contraction (the
# harness is built with -ffp-contract=off, as the CPU library is), so what they write is the same bits;
# their sums are chunked and ordered differently, so values agree to sum_tol.
# Set-ups: (params dtype, anchors dtype, fisher given).
ANCHOR_CASES = {
    "f32": (torch.float32, torch.float32, False),
    "f32-fisher": (torch.float32, torch.float32, True),
    "f32-bf16-anchors-fisher": (torch.float32, torch.bfloat16, True),
    "f16-bf16-anchors": (torch.float16, torch.bfloat16, False),
    "bf16-fisher": (torch.bfloat16, torch.bfloat16, True),
    "f64-fisher": (torch.float64, torch.float64, True),
    "f64-bf16-anchors": (torch.float64, torch.bfloat16, False),
}
ANCHOR_SIZES = [0, 1, 7, 33, 1000, CHUNK + 9]  # zero-size, packs with tails, two chunks
NAN_ANCHOR = 4  # its l2_sp (and sp_factors) are zero and its anchor and fisher all NaN: never read
BITS = {8: torch.int64, 4: torch.int32, 2: torch.int16}


def assert_same_bits(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape
        assert torch.equal(g.view(BITS[g.element_size()]), w.view(BITS[w.element_size()]))


def _anchored(sizes, dtype, anchor_dtype, with_fisher, seed, nan_anchor=None):
    """Params, their anchors (a = w - 0.1 d, d ~ N(0, 1)) in anchor_dtype and, with_fisher, importances
    |F|, F ~ N(0, 1), in anchor_dtype (else None); anchor and fisher of tensor nan_anchor all NaN."""
    params = random_tensors(sizes, dtype, "cpu", seed=seed)
    moves = random_tensors(sizes, torch.float64, "cpu", seed=seed + 1)
    anchors = [(p.double() - 0.1 * d).to(anchor_dtype) for p, d in zip(params, moves)]
    fisher = None
    if with_fisher:
        fisher = [f.abs().to(anchor_dtype) for f in random_tensors(sizes, torch.float64, "cpu", seed=seed + 2)]
    if nan_anchor is not None:
        for t in [anchors] + ([fisher] if with_fisher else []):
            t[nan_anchor].fill_(float("nan"))
    return params, anchors, fisher


def _l2_sp(n, zero=NAN_ANCHOR):
    return [0.0 if i == zero else 0.5 + 0.25 * i for i in range(n)]


def _clones(tensors):
    return [t.clone() for t in tensors]


def _penalty_ops(impl, params, grads, kw, sp_factors):
    """Every anchored penalty op once: (values, written tensors)."""
    n = len(params)
    l2 = [0.0 if i % 3 == 0 else 0.1 * (1 + i % 2) for i in range(n)]
    l1 = [0.0 if i % 2 == 0 else 0.01 for i in range(n)]
    values = [impl.penalty(params, l2, l1, **kw)]
    written = []
    for scale in (torch.tensor(1.5), torch.tensor(-0.25, dtype=torch.float64)):
        written += impl.penalty_grad(params, scale, l2, l1, **kw)
    grads = _clones(grads)
    values.append(impl.add_penalty_grad_(params, grads, l2, l1, **kw))
    decayed = _clones(params)
    values.append(impl.decay_(decayed, [0.001 * i for i in range(n)], l2, sp_factors=sp_factors, **kw))
    return values, written + grads + decayed


@pytest.mark.parametrize("case", ANCHOR_CASES.values(), ids=ANCHOR_CASES.keys())
def test_anchored_penalties_match_native_cpu(case):
    """penalty, penalty_grad, add_penalty_grad_ and decay_ with anchors. decay_'s tensors: some pulled and
    weighed (sp_factors and l2_sp nonzero), tensor 1 pulled alone (l2_sp zero), tensor 5 weighed alone
    (sp_factors zero)."""
    dtype = case[0]
    params, anchors, fisher = _anchored(ANCHOR_SIZES, *case, seed=60, nan_anchor=NAN_ANCHOR)
    grads = random_tensors(ANCHOR_SIZES, dtype, "cpu", seed=63)
    n = len(params)
    l2_sp = _l2_sp(n, zero=NAN_ANCHOR)
    sp_factors = [0.0 if i in (NAN_ANCHOR, 5) else 0.01 * (i + 1) for i in range(n)]
    l2_sp[1] = 0.0
    kw = dict(anchors=anchors, fisher=fisher, l2_sp=l2_sp)
    got_values, got = _penalty_ops(emu, params, grads, kw, sp_factors)
    want_values, want = _penalty_ops(native, params, grads, kw, sp_factors)
    for g, w in zip(got_values, want_values):
        assert_sums_close(g, w, dtype)
    assert not any(t.isnan().any() for t in got)  # the NaN anchor was not read
    assert_same_bits(got, want)


def _anchored_adam(impl, ps, gs, state, scalars, k, kw, amsgrad=False):
    n = len(ps)
    return impl.adam_step_(ps, gs, state[0], state[1], state[2] if amsgrad else [], state[3], [1e-2], [0.9], [0.99],
                           [1e-8], [0.0 if i % 2 else 0.1 for i in range(n)], [1e-3],
                           [0.0 if i % 3 else 1e-3 for i in range(n)], [0.1], False, *scalars, **kw)


def _anchored_sgd(impl, ps, gs, state, scalars, k, kw, nesterov=False):
    n = len(ps)
    return impl.sgd_step_(ps, gs, state[0], [1e-2], [0.9], [0.0 if nesterov else 0.1], [int(k == 0)],
                          [0.0 if i % 2 else 0.1 for i in range(n)], [1e-3], [0.0 if i % 3 else 1e-3 for i in range(n)],
                          [0.1], nesterov, False, *scalars, **kw)


ANCHORED_STEPS = {
    "adam": lambda *a: _anchored_adam(*a),
    "adam-amsgrad": lambda *a: _anchored_adam(*a, amsgrad=True),
    "sgd-momentum": lambda *a: _anchored_sgd(*a),
    "sgd-nesterov": lambda *a: _anchored_sgd(*a, nesterov=True),
}


def _anchored_step_run(impl, step, case, decoupled, sizes=ANCHOR_SIZES, offsets=(0, 0)):
    """Two steps and a third skipped by found_inf, as _step_run takes them, with anchors; params, grads
    and state `offsets[0]` elements into their storage, anchors and fisher `offsets[1]`."""
    params, anchors, fisher = _anchored(sizes, *case, seed=70, nan_anchor=NAN_ANCHOR if len(sizes) > NAN_ANCHOR else None)
    dtype = case[0]
    params = [_view(p, offsets[0]) for p in params]
    anchors = [_view(a, offsets[1]) for a in anchors]
    fisher = None if fisher is None else [_view(f, offsets[1]) for f in fisher]
    state = [[_view(t, offsets[0]) for t in random_tensors(sizes, dtype, "cpu", seed=72 + j)] for j in range(3)]
    state[1] = [s.abs_() for s in state[1]]  # exp_avg_sq >= 0
    state.append([torch.tensor(float(k), dtype=torch.float32 if k else torch.float64) for k in range(len(params))])
    kw = dict(anchors=anchors, fisher=fisher, l2_sp=_l2_sp(len(params)), decoupled_sp=decoupled)
    values, grads_after = [], []
    for k in range(3):
        grads = [_view(g * 64.0, offsets[0]) for g in random_tensors(sizes, dtype, "cpu", seed=80 + k)]
        scalars = (torch.tensor(64.0), torch.tensor([float(k == 2)]), torch.tensor(0.75, dtype=torch.float64))
        values.append(ANCHORED_STEPS[step](impl, params, grads, state, scalars, k, kw))
        grads_after += grads
    return values, params + [t for lst in state for t in lst] + grads_after


# Each rule coupled and decoupled, over the set-ups in turn (the harness is slow).
ANCHORED_STEP_RUNS = [
    ("adam", "f32-fisher", False),
    ("adam", "f32-bf16-anchors-fisher", True),
    ("adam", "bf16-fisher", False),
    ("adam", "f64-fisher", True),
    ("adam", "f16-bf16-anchors", True),
    ("adam-amsgrad", "f32", False),
    ("adam-amsgrad", "f64-bf16-anchors", True),
    ("sgd-momentum", "f32-bf16-anchors-fisher", False),
    ("sgd-momentum", "bf16-fisher", True),
    ("sgd-nesterov", "f32-fisher", True),
    ("sgd-nesterov", "f64-fisher", False),
]


@pytest.mark.parametrize("step, case, decoupled", ANCHORED_STEP_RUNS)
def test_anchored_optimizer_steps_match_native_cpu(step, case, decoupled):
    got_values, got = _anchored_step_run(emu, step, ANCHOR_CASES[case], decoupled)
    want_values, want = _anchored_step_run(native, step, ANCHOR_CASES[case], decoupled)
    for g, w in zip(got_values, want_values):
        assert_sums_close(g, w, ANCHOR_CASES[case][0])
    assert not any(t.isnan().any() for t in got)  # the NaN anchor was not read
    assert_same_bits(got, want)


@pytest.mark.parametrize("step, decoupled", [("adam", False), ("sgd-momentum", True)])
def test_anchored_optimizer_steps_span_several_launch_tables(step, decoupled):
    """More tensors than two anchored step tables hold, anchored from the middle of the second on (its
    first table goes to the plain kernel in plain rows): bitwise the native CPU backend's."""
    n = 2 * emu.ANCHORED_STEP_TENSORS_PER_LAUNCH + 3
    first_anchored = emu.ANCHORED_STEP_TENSORS_PER_LAUNCH * 3 // 2
    sizes = [1 + (i * 37) % 61 for i in range(n)]
    case = ANCHOR_CASES["f32-bf16-anchors-fisher"]
    runs = []
    for impl in (emu, native):
        params, anchors, fisher = _anchored(sizes, *case, seed=75)
        state = [random_tensors(sizes, torch.float32, "cpu", seed=76 + j) for j in range(3)]
        state[1] = [s.abs_() for s in state[1]]
        state.append([torch.tensor(float(i % 3)) for i in range(n)])
        l2_sp = [0.0 if i < first_anchored else 0.5 + 0.25 * (i % 4) for i in range(n)]
        kw = dict(anchors=anchors, fisher=fisher, l2_sp=l2_sp, decoupled_sp=decoupled)
        grads = random_tensors(sizes, torch.float32, "cpu", seed=79)
        value = ANCHORED_STEPS[step](impl, params, grads, state, (None, None, None), 0, kw)
        runs.append((value, params + [t for lst in state for t in lst] + grads))
    (got_value, got), (want_value, want) = runs
    assert_sums_close(got_value, want_value, torch.float32)
    assert_same_bits(got, want)


def test_anchored_step_skipped_by_found_inf_writes_nothing_and_values_the_anchors():
    """found_inf set: nothing written, the counters left alone, and the value (of the weights the step
    would start from) includes sp / 2 * sum F (w - a)^2."""
    sizes = [CHUNK + 3, 100]
    params, anchors, fisher = _anchored(sizes, torch.float32, torch.bfloat16, True, seed=90)
    before = _clones(params)
    grads = random_tensors(sizes, torch.float32, "cpu", seed=91)
    grads_before = _clones(grads)
    state = [[torch.zeros_like(p) for p in params] for _ in range(2)]
    steps = [torch.tensor(4.0) for _ in sizes]
    l2_sp = [0.5, 2.0]
    value = emu.adam_step_(params, grads, *state, [], steps, [1e-2], [0.9], [0.99], [1e-8], [0.1], [0.0], [0.0], [0.1],
                           False, torch.tensor(8.0), torch.tensor(1.0), torch.tensor(0.5), anchors=anchors,
                           fisher=fisher, l2_sp=l2_sp, decoupled_sp=True)
    assert all(torch.equal(p, b) for p, b in zip(params, before)) and all(s.item() == 4.0 for s in steps)
    assert all(torch.equal(g, b) for g, b in zip(grads, grads_before))
    assert not any(s.any() for lst in state for s in lst)
    want = sum(0.05 * p.double().square().sum() + sp / 2 * (f.double() * (p.double() - a.double()).square()).sum()
               for p, a, f, sp in zip(before, anchors, fisher, l2_sp))
    assert_sums_close(value, want.float(), torch.float32)
    assert_sums_close(value, native.penalty(before, [0.1], [0.0], anchors, fisher, l2_sp), torch.float32)


def test_zero_sp_anchors_are_not_read():
    """The anchor and fisher of a tensor whose l2_sp (and sp_factors) are zero are ASan-poisoned: every
    op, beside anchored tensors, runs without touching them."""
    sizes = [1000, CHUNK + 3, 64]
    params, anchors, fisher = _anchored(sizes, torch.float32, torch.float32, True, seed=95)
    grads = random_tensors(sizes, torch.float32, "cpu", seed=96)
    kw = dict(anchors=anchors, fisher=fisher, l2_sp=[0.5, 0.0, 0.25])
    sp_factors = [0.01, 0.0, 0.0]
    runs = []
    for impl in (native, emu):
        if impl is emu:
            emu.poison([anchors[1], fisher[1]])
        try:
            values, written = _penalty_ops(impl, params, grads, kw, sp_factors)
            for step, decoupled in (("adam", False), ("sgd-nesterov", True)):
                state = [_clones(params) for _ in range(3)] + [[torch.tensor(0.0) for _ in sizes]]
                state[1] = [s.abs_() for s in state[1]]
                ps, gs = _clones(params), _clones(grads)
                scalars = (None, None, None)
                values.append(ANCHORED_STEPS[step](impl, ps, gs, state, scalars, 0, dict(kw, decoupled_sp=decoupled)))
                written += ps + [t for lst in state[:3] for t in lst]
        finally:
            emu.unpoison([anchors[1], fisher[1]])
        runs.append((values, written))
    (want_values, want), (got_values, got) = runs
    for g, w in zip(got_values, want_values):
        assert_sums_close(g, w, torch.float32)
    assert_same_bits(got, want)


@pytest.mark.parametrize(
    "dtype, anchor_dtype, offset, head",
    [
        (torch.float32, torch.float32, 1, 3),  # anchors misaligned alike: 3 scalar elements, then packs
        (torch.float32, torch.float32, 2, -1),  # differently: every element scalar
        (torch.float32, torch.bfloat16, 1, 3),  # 2 bytes in: the 8-byte packs of bfloat16 align at element 3 too
        (torch.float32, torch.bfloat16, 2, -1),
        (torch.bfloat16, torch.bfloat16, 1, 7),
        (torch.float64, torch.bfloat16, 1, 1),
    ],
)
def test_anchored_ops_over_misaligned_views(dtype, anchor_dtype, offset, head):
    """Params, grads and state one element into their storage, anchors and fisher `offset` elements in:
    pack_head counts each pointer's alignment in its own element size (a pack of N params goes with N
    anchors), so the chunks peel `head` elements and move the rest in packs (load_pack checks every
    pack's alignment), or (-1) go element by element. Every op equals the native CPU backend's."""
    sizes = [CHUNK + 13, 1000]
    case = (dtype, anchor_dtype, True)
    params, anchors, fisher = _anchored(sizes, *case, seed=100)
    w, a, f = _view(params[0], 1), _view(anchors[0], offset), _view(fisher[0], offset)
    assert emu.pack_head([w, _view(params[1], 1), a, f]) == head
    params = [_view(p, 1) for p in params]
    anchors = [_view(t, offset) for t in anchors]
    fisher = [_view(t, offset) for t in fisher]
    grads = [_view(g, 1) for g in random_tensors(sizes, dtype, "cpu", seed=101)]
    kw = dict(anchors=anchors, fisher=fisher, l2_sp=[0.5, 0.25])
    got_values, got = _penalty_ops(emu, params, grads, kw, [0.01, 0.02])
    want_values, want = _penalty_ops(native, params, grads, kw, [0.01, 0.02])
    steps = [_anchored_step_run(impl, "adam", case, True, sizes, (1, offset)) for impl in (emu, native)]
    for g, w in zip(got_values + steps[0][0], want_values + steps[1][0]):
        assert_sums_close(g, w, dtype)
    assert_same_bits(got + steps[0][1], want + steps[1][1])


def test_anchored_value_folds_many_chunks_in_the_shared_order():
    """The deviations' partials fold in fold.h's order, as the other sums do: F * (w - a)^2 of chunk k is
    2^53 (k = 0) or 1.0 (w = 1, a = 0, F = chunk_pattern), in tensors of 20 chunks (one warp folds them)
    and 65 (the whole block). Each value is fold_block_order of its partials, bitwise, and the CPU
    backend's on tensors with the same partials (its chunks are longer)."""
    counts = [20, 65]
    empty64 = torch.zeros(0, dtype=torch.float64)  # float64 results, in which 2^53 + k survives
    values = []
    for impl, chunk in ((emu, CHUNK), (native, CPU_CHUNK)):
        fisher = [chunk_pattern(n, chunk, torch.bfloat16)[0] for n in counts] + [empty64]
        params = [torch.ones_like(f) for f in fisher]
        anchors = [torch.zeros_like(f) for f in fisher]
        values.append(impl.penalty(params, [0.0], [0.0], anchors, fisher, [2.0]))
    partials = [[BIG] + [1.0] * (n - 1) for n in counts]
    assert all(fold_block_order(p) != left_to_right(p) for p in partials)  # the cases tell the orders apart
    assert values[0].item() == fold_block_order([fold_block_order(p) for p in partials] + [0.0])
    assert torch.equal(values[0], values[1])


def test_anchored_penalty_of_a_large_tensor():
    """65 chunks of random values, bfloat16 anchors and fisher: the block fold of real partials."""
    params, anchors, fisher = _anchored([1_048_583], torch.float32, torch.bfloat16, True, seed=110)
    kw = dict(anchors=anchors, fisher=fisher, l2_sp=[0.7])
    assert_sums_close(emu.penalty(params, [0.3], [0.1], **kw), native.penalty(params, [0.3], [0.1], **kw), torch.float32)

