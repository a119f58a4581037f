"""pytest-benchmark suite for the fused ops on the Transformer-base parameter set.

    cd bench && pytest test_bench_ops.py --benchmark-columns=median,ops
"""
import json

import pytest
import torch

import l2fast
from bench_ops import LAM, foreach_sq_norm, naive_sq_norm
from common import (make_params, paired_ratio, parse_table, record, round_seconds, table, table_records,
                    transformer_base_shapes)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(scope="module")
def params():
    return make_params(transformer_base_shapes(), DEVICE)


@pytest.fixture(scope="module")
def grads(params):
    return [torch.randn_like(p) for p in params]


def run(benchmark, fn):
    """Times fn; returns its results, one per call (each method is also checked: a fast wrong one
    fails)."""
    sync = torch.cuda.synchronize if DEVICE == "cuda" else (lambda: None)
    results = []

    def call():
        results.append(fn())
        sync()

    benchmark.pedantic(call, rounds=15, warmup_rounds=2)
    return results


@pytest.mark.benchmark(group="squared norm")
@pytest.mark.parametrize(
    "method",
    ["naive", "foreach_norm", "l2fast", "roofline_dot"],
)
def test_sq_norm(benchmark, params, method):
    flat = torch.cat([p.flatten() for p in params])
    half = flat.numel() // 2
    fns = {
        "naive": lambda: naive_sq_norm(params),
        "foreach_norm": lambda: foreach_sq_norm(params),
        "l2fast": lambda: l2fast.sq_norm(params),
        "roofline_dot": lambda: torch.dot(flat[:half], flat[half : 2 * half]),
    }
    got = run(benchmark, fns[method])[-1]
    if method != "roofline_dot":
        exact = sum(p.double().pow(2).sum() for p in params)
        # l2fast sums in float64; the peers sum in float32 (_foreach_norm loses ~6e-4 of this sum on the CPU).
        assert abs(got.double() - exact) / exact <= (1e-7 if method == "l2fast" else 2e-3)


@pytest.mark.benchmark(group="penalty + gradient")
@pytest.mark.parametrize("method", ["naive_autograd", "foreach", "l2fast_fused", "roofline_add"])
def test_penalty_grad(benchmark, params, grads, method):
    leaves = [p.clone().requires_grad_() for p in params]
    for leaf, g in zip(leaves, grads):
        leaf.grad = g.clone()
    flat_a = torch.cat([p.flatten() for p in params])
    flat_b = torch.randn_like(flat_a)
    fns = {
        "naive_autograd": lambda: (LAM / 2 * naive_sq_norm(leaves)).backward(),
        "foreach": lambda: torch._foreach_add_(grads, params, alpha=LAM),
        "l2fast_fused": lambda: l2fast.add_penalty_grad_(params, grads, l2=LAM),
        "roofline_add": lambda: flat_a.add_(flat_b),
    }
    before = [g.clone() for g in grads]
    calls = len(run(benchmark, fns[method]))
    if method != "roofline_add":  # every call added LAM * w to the gradients
        after = [leaf.grad for leaf in leaves] if method == "naive_autograd" else grads
        start = [g.clone() for g in grads] if method == "naive_autograd" else before
        for g, g0, w in zip(after, start, params):
            torch.testing.assert_close(g, g0 + calls * LAM * w, rtol=1e-5, atol=1e-6)


def test_paired_ratio_is_the_median_and_quartiles_of_each_rounds_ratio():
    # Rounds 2 and 4 ran everything twice as slow: paired, that drift leaves the ratio at 2.
    assert paired_ratio([2.0, 8.0, 6.0, 16.0], [1.0, 4.0, 3.0, 8.0]) == (2.0, 2.0, 2.0)
    # Ratios 1, 2, 3, 4, 5 (out of order): median 3, quartiles 2 and 4.
    assert paired_ratio([3.0, 1.0, 10.0, 2.0, 4.0], [1.0, 1.0, 2.0, 1.0, 1.0]) == (3.0, 2.0, 4.0)
    assert paired_ratio([3.0], [2.0]) == (1.5, 1.5, 1.5)
    with pytest.raises(ValueError):  # rounds that do not pair up are a bug, not a ratio
        paired_ratio([1.0, 2.0], [1.0])


def test_round_seconds_runs_every_method_once_per_round_in_changing_orders():
    def calls_in_order(rounds):
        calls = []
        times = round_seconds({name: (lambda n=name: calls.append(n)) for name in "abcd"}, "cpu", rounds, warmup=0)
        assert {name: len(ts) for name, ts in times.items()} == {name: rounds for name in "abcd"}
        return [calls[i:i + 4] for i in range(0, len(calls), 4)]

    orders = calls_in_order(8)
    assert all(sorted(order) == list("abcd") for order in orders)
    # No method keeps one predecessor: that fixed neighbour is what the changing order removes.
    for name in "abcd":
        predecessors = {order[order.index(name) - 1] for order in orders if order.index(name) > 0}
        assert len(predecessors) > 1, name
    assert calls_in_order(8) == orders  # seeded: a rerun measures in the same orders


def test_record_appends_one_self_describing_json_line_per_run(tmp_path, monkeypatch):
    monkeypatch.setenv("L2FAST_BENCH_RESULTS", str(tmp_path))
    rows = table_records(["method", "ms"], [["a", "1.0"], ["b", "2.0"]])
    first = record("bench_x", {"tables": {"t": rows}}, "cpu", "python bench/bench_x.py --rounds 1")
    record("bench_x", {"tables": {"t": rows[:1]}}, "cpu", "python bench/bench_x.py --rounds 2")
    lines = [json.loads(line) for line in first.read_text().splitlines()]
    assert first == tmp_path / "bench_x.jsonl" and len(lines) == 2  # appended, never rewritten
    run = lines[0]
    assert run["bench"] == "bench_x" and run["command"].endswith("--rounds 1")
    assert run["results"]["tables"]["t"] == [{"method": "a", "ms": "1.0"}, {"method": "b", "ms": "2.0"}]
    for key in ("date", "commit", "local_changes", "l2fast_backend", "device"):
        assert key in run, key
    assert run["machine"]["torch"] == torch.__version__ and "isa_flags" in run["machine"]
    monkeypatch.setenv("L2FAST_BENCH_RESULTS", "off")
    assert record("bench_x", {}, "cpu", "smoke") is None
    assert len(first.read_text().splitlines()) == 2


def test_parse_table_reads_back_what_table_prints():
    columns, rows = ["set", "ms"], [["transformer-base", "1.5"], ["10kx1k", "2.0"]]
    assert parse_table("A title\n\n" + table(columns, rows) + "\n\nA note.") == (columns, rows)
    assert parse_table("no table here") == ([], [])
