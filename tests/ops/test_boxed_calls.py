"""Calls from Python into the ops that take tensor lists boxed (csrc/dispatch/boxed.h): the lists are
borrowed, never leaked or released twice, and the results equal the float64 reference.

A leaked C++ reference shows as one more Python reference to the tensor (torch keeps the Python object
of a tensor alive while C++ holds it); a reference released twice frees a tensor still in use."""
import sys
import threading
import weakref

import pytest
import torch

from l2fast import reference

ops = torch.ops.l2fast
N = 6


def tensors(seed, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(3 + k, generator=g).requires_grad_(requires_grad) for k in range(N)]


def zeros(like):
    return [torch.zeros_like(t) for t in like]


def adam_args():
    params, grads = tensors(1), tensors(2)
    steps = [torch.tensor(0.0) for _ in params]
    return (params, grads, zeros(params), zeros(params), zeros(params), steps, [1e-2], [0.9], [0.99], [1e-8], [0.1],
            [1e-3], [1e-2], [0.1], False, torch.tensor(2.0), torch.tensor(0.0), torch.tensor(0.5))


def sgd_args():
    params, grads = tensors(1), tensors(2)
    return (params, grads, zeros(params), [1e-2], [0.9], [0.1], [1], [0.1], [1e-3], [0.0], [0.1], True, False, None,
            None, None)


# name -> function of nothing giving the op's arguments; fresh tensors on every call.
CALLS = {
    "sq_norm": lambda: (tensors(1), [0.5 + k for k in range(N)], False),
    "sq_norm per tensor": lambda: (tensors(1), [1.0], True),
    "l1_norm": lambda: (tensors(1), [0.25], False),
    "penalty": lambda: (tensors(1), [0.1], [1e-3]),
    "add_penalty_grad_": lambda: (tensors(1), tensors(2), [0.1], [1e-3]),
    "decay_": lambda: (tensors(1), [1e-2], [0.1]),
    "adam_step_": adam_args,
    "sgd_step_": sgd_args,
}


def op_name(case):
    return case.split()[0]


def flat_tensors(args):
    """Every tensor among a call's arguments, lists included."""
    out = []
    for a in args:
        if isinstance(a, torch.Tensor):
            out.append(a)
        elif isinstance(a, list):
            out.extend(t for t in a if isinstance(t, torch.Tensor))
    return out


@pytest.mark.parametrize("case", CALLS)
def test_result_and_written_tensors_match_the_reference(case):
    native_args, reference_args = CALLS[case](), CALLS[case]()
    got = getattr(ops, op_name(case))(*native_args)
    want = getattr(reference, op_name(case))(*reference_args)
    torch.testing.assert_close(got.double(), want.double(), rtol=1e-6, atol=1e-12)
    for a, b in zip(flat_tensors(native_args), flat_tensors(reference_args)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("case", CALLS)
def test_a_call_leaves_every_reference_count_as_it_was(case):
    args = CALLS[case]()
    before = [sys.getrefcount(t) for t in flat_tensors(args)]
    for _ in range(3):
        result = getattr(ops, op_name(case))(*args)
        del result
    assert [sys.getrefcount(t) for t in flat_tensors(args)] == before


@pytest.mark.parametrize("case", CALLS)
def test_tensors_held_only_by_the_call_are_freed_after_it(case):
    args = CALLS[case]()
    alive = [weakref.ref(t) for t in flat_tensors(args)]
    result = getattr(ops, op_name(case))(*args)
    del args
    assert [r() for r in alive] == [None] * len(alive)
    assert torch.isfinite(result).all()  # the result owns its own storage


@pytest.mark.parametrize("case", CALLS)
def test_a_refused_call_leaves_every_reference_count_as_it_was(case):
    args = list(CALLS[case]())
    args[0] = args[0] + [torch.arange(3)]  # an integer tensor, and one tensor more than the other lists
    before = [sys.getrefcount(t) for t in flat_tensors(args)]
    for _ in range(3):
        with pytest.raises(RuntimeError, match="l2fast"):
            getattr(ops, op_name(case))(*args)
    assert [sys.getrefcount(t) for t in flat_tensors(args)] == before


@pytest.mark.parametrize("name", ["sq_norm", "l1_norm", "penalty"])
def test_autograd_holds_references_only_while_the_graph_lives(name):
    params = tensors(1, requires_grad=True)
    coeffs = [[0.5], [0.25]] if name == "penalty" else [[0.5], False]
    before = [sys.getrefcount(t) for t in params]
    value = getattr(ops, name)(params, *coeffs)
    value.backward()
    grads = [p.grad.clone() for p in params]
    del value
    assert [sys.getrefcount(t) for t in params] == before
    want = [torch.autograd.grad(getattr(reference, name)(params, *coeffs), p)[0] for p in params]
    torch.testing.assert_close(grads, want)


def test_concurrent_calls_from_python_threads_agree():
    params = tensors(1)
    want = reference.sq_norm(params, [1.0], False).item()
    results, errors = [], []

    def worker():
        try:
            for _ in range(200):
                results.append(ops.sq_norm(params, [1.0], False).item())
        except Exception as error:  # reported below, not swallowed
            errors.append(error)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(results) == 800 and all(abs(r - want) <= 1e-6 * want for r in results)
