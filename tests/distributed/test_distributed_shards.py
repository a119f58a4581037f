"""Global values over shards, three gloo processes on the CPU against the unsharded tensors: every
functional op on FSDP2 DTensors (uneven shards, one rank holding an empty shard), on plain shards
with ``group=``, and Penalized with a rank that holds nothing to penalise. A collective one rank
skipped would hang the others: the process group's timeout turns that into a failure."""
import pytest
import torch
import torch.distributed as dist

import l2fast
from conftest import run_on_gloo
from test_fisher import by_hand, mse, regression

WORLD = 3
L2, L1 = 0.2, 0.01
SHAPES = [(5, 7), (5,), (2, 3)]  # rows shard 2/2/1, 2/2/1 and 1/1/0 over three ranks

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")]


def full_tensors():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(s, generator=g, dtype=torch.float64).float() for s in SHAPES]


def full_grads():
    g = torch.Generator().manual_seed(1)
    return [torch.randn(s, generator=g, dtype=torch.float64).float() for s in SHAPES]


SP = [0.5, 0.0, 1.5]  # the pull toward anchors (L2-SP, EWC); the second tensor's anchor is NaN, never read
PULLED = [0, 2]


def full_anchors():
    """(anchors, fisher) of the full tensors."""
    g = torch.Generator().manual_seed(2)
    anchors = [w + 0.3 * torch.randn(s, generator=g) for w, s in zip(full_tensors(), SHAPES)]
    anchors[1] = torch.full(SHAPES[1], float("nan"))
    return anchors, [2 * torch.rand(s, generator=g) for s in SHAPES]


def dtensor_ops(rank):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (WORLD,))

    def sharded(tensors, grads=None):
        out = [torch.nn.Parameter(distribute_tensor(t.clone(), mesh, [Shard(0)])) for t in tensors]
        for p, g in zip(out, grads or []):
            p.grad = distribute_tensor(g.clone(), mesh, [Shard(0)])
        return out

    results = {}
    params = sharded(full_tensors())
    results["sq_norm"] = l2fast.sq_norm(params, coeffs=[1.0, 2.0, 3.0])
    results["l1_norm_per_tensor"] = l2fast.l1_norm(params, per_tensor=True)
    value = l2fast.penalty(params, l2=L2, l1=L1)
    value.backward()
    results["penalty"] = value.detach()
    results["penalty_grads"] = [p.grad.full_tensor() for p in params]
    params = sharded(full_tensors(), full_grads())
    results["add_penalty_grad_"] = l2fast.add_penalty_grad_(params, l2=L2, l1=L1)
    results["penalised_grads"] = [p.grad.full_tensor() for p in params]
    results["decay_"] = l2fast.decay_(params, 0.1, l2=L2)
    results["decayed"] = [p.detach().full_tensor() for p in params]
    params = sharded(full_tensors(), full_grads())
    results["clip_norm"] = l2fast.clip_grad_norm_(params, 0.5)
    results["clipped"] = [p.grad.full_tensor() for p in params]
    results.update(anchored_dtensor_ops(sharded, *([distribute_tensor(t, mesh, [Shard(0)]) for t in ts]
                                                   for ts in full_anchors())))
    return results


def anchored_dtensor_ops(sharded, anchors, fisher):
    """penalty, add_penalty_grad_ and decay_ with DTensor anchors and fisher sharded like the params."""
    results = {}
    params = sharded(full_tensors())
    value = l2fast.penalty(params, l2=L2, anchors=anchors, fisher=fisher, l2_sp=SP)
    value.backward()
    results["anchored_penalty"] = value.detach()
    results["anchored_penalty_grads"] = [p.grad.full_tensor() for p in params]
    params = sharded(full_tensors(), full_grads())
    results["anchored_add_penalty_grad_"] = l2fast.add_penalty_grad_(params, l2=L2, anchors=anchors, fisher=fisher,
                                                                     l2_sp=SP)
    results["anchored_grads"] = [p.grad.full_tensor() for p in params]
    results["anchored_decay_"] = l2fast.decay_(params, 0.1, l2=L2, anchors=anchors, fisher=fisher,
                                               sp_factors=[0.1 * s for s in SP], l2_sp=SP)
    results["anchored_decayed"] = [p.detach().full_tensor() for p in params]
    return results


def plain_shard_ops(rank):
    """Rows [rank::WORLD] of each tensor as plain tensors; the last rank also clips a list of
    parameters without gradients."""
    shards = [t[rank::WORLD].clone().requires_grad_() for t in full_tensors()]
    for shard, g in zip(shards, full_grads()):
        shard.grad = g[rank::WORLD].clone()
    world = dist.group.WORLD
    results = {"sq_norm": l2fast.sq_norm(shards, group=world), "penalty": l2fast.penalty(shards, L2, L1, group=world)}
    clipped = shards if rank < WORLD - 1 else [torch.zeros(3, requires_grad=True)]
    results["clip_norm"] = l2fast.clip_grad_norm_(clipped, 0.5, group=world)
    anchors, fisher = ([t[rank::WORLD].clone() for t in ts] for ts in full_anchors())
    results["anchored_penalty"] = l2fast.penalty(shards, L2, L1, group=world, anchors=anchors, fisher=fisher, l2_sp=SP)
    # The last rank holds nothing to pull: an empty list, and no anchors for it.
    pulled = PULLED if rank < WORLD - 1 else []
    results["anchored_idle"] = l2fast.penalty([shards[i] for i in pulled], group=world,
                                              anchors=[anchors[i] for i in pulled], l2_sp=0.5)
    return results


def penalized_with_an_idle_rank(rank):
    """Two penalised tensors over three ranks, ZeRO style: rank r steps tensor r; the last rank owns
    a parameter that has no gradient, so nothing to penalise or to clip."""
    full = full_tensors()[:2]
    owned = torch.nn.Parameter(full[rank].clone()) if rank < 2 else torch.nn.Parameter(torch.zeros(1))
    if rank < 2:
        owned.grad = full_grads()[rank].clone()
    opt = l2fast.Penalized(torch.optim.SGD([owned], lr=0.1), l2=L2, max_grad_norm=0.5, shard_group=dist.group.WORLD)
    opt.step()
    return {"penalty": opt.last_penalty, "grad_norm": opt.last_grad_norm, "param": owned.detach().clone()}


def fisher_over_ranks(rank):
    """Four batches over three ranks, two on the first: the estimate is the mean over all four."""
    model, batches = regression(batches=4)
    mine = [batches[:2], batches[2:3], batches[3:]][rank]
    return {per_example: l2fast.diagonal_fisher(model, mine, mse, per_example=per_example, group=dist.group.WORLD)
            for per_example in (False, True)}


def job(rank):
    return {"dtensor": dtensor_ops(rank), "plain": plain_shard_ops(rank), "idle": penalized_with_an_idle_rank(rank),
            "fisher": fisher_over_ranks(rank)}


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    return run_on_gloo(job, WORLD, tmp_path_factory.mktemp("shards"))


def close(got, want, rel=1e-7):
    from torch.distributed.tensor import DTensor

    assert not isinstance(got, DTensor)  # a plain tensor, the same on every rank
    got, want = torch.as_tensor(got).detach().double(), torch.as_tensor(want).double()
    assert ((got - want).abs().max() <= rel * want.abs().max().clamp(min=1e-30)).item(), (got, want)


def test_functional_ops_on_dtensors_give_the_unsharded_values(ranks):
    w, g = [t.double() for t in full_tensors()], [t.double() for t in full_grads()]
    penalty = sum(L2 / 2 * (t**2).sum() + L1 * t.abs().sum() for t in w)
    norm = sum((t**2).sum() for t in g).sqrt()
    for rank in ranks:
        got = rank["dtensor"]
        close(got["sq_norm"], sum(c * (t**2).sum() for c, t in zip([1.0, 2.0, 3.0], w)))
        close(got["l1_norm_per_tensor"], torch.stack([t.abs().sum() for t in w]))
        close(got["penalty"], penalty)
        for grad, t in zip(got["penalty_grads"], w):
            close(grad, L2 * t + L1 * t.sign(), rel=1e-6)
        close(got["add_penalty_grad_"], penalty)
        for grad, t, raw in zip(got["penalised_grads"], w, g):
            close(grad, raw + L2 * t + L1 * t.sign(), rel=1e-6)
        close(got["decay_"], sum(L2 / 2 * (t**2).sum() for t in w))
        for decayed, t in zip(got["decayed"], w):
            close(decayed, 0.9 * t, rel=1e-6)
        close(got["clip_norm"], norm)
        for clipped, raw in zip(got["clipped"], g):
            close(clipped, raw * 0.5 / (norm + 1e-6), rel=1e-6)


def test_plain_shards_with_group_give_the_whole_value_on_every_rank(ranks):
    w, g = [t.double() for t in full_tensors()], [t.double() for t in full_grads()]
    held = [t[r::WORLD] for t in g for r in range(WORLD - 1)]  # the last rank clips nothing
    for rank in ranks:
        close(rank["plain"]["sq_norm"], sum((t**2).sum() for t in w))
        close(rank["plain"]["penalty"], sum(L2 / 2 * (t**2).sum() + L1 * t.abs().sum() for t in w))
        close(rank["plain"]["clip_norm"], sum((t**2).sum() for t in held).sqrt())


def anchored_by_hand(l1=0.0):
    """(value, gradients) of the anchored penalty of the full tensors, in float64."""
    anchors, importances = full_anchors()
    value, grads = 0.0, []
    for w, a, f, s in zip((t.double() for t in full_tensors()), anchors, importances, SP):
        value = value + L2 / 2 * (w**2).sum() + l1 * w.abs().sum()
        grad = L2 * w + l1 * w.sign()
        if s:  # the NaN anchor of an unpulled tensor is not read
            value = value + s / 2 * (f.double() * (w - a.double()) ** 2).sum()
            grad = grad + s * f.double() * (w - a.double())
        grads.append(grad)
    return value, grads


def test_anchored_ops_on_dtensors_with_dtensor_anchors_give_the_unsharded_values(ranks):
    value, grads = anchored_by_hand()
    raw = [t.double() for t in full_grads()]
    anchors, importances = full_anchors()
    decayed = [0.9 * w.double() - (0.1 * s * f.double() * (w.double() - a.double()) if s else 0.0)
               for w, a, f, s in zip(full_tensors(), anchors, importances, SP)]
    for rank in ranks:
        got = rank["dtensor"]
        close(got["anchored_penalty"], value)
        close(got["anchored_add_penalty_grad_"], value)
        close(got["anchored_decay_"], value)
        for grad, added, want, r in zip(got["anchored_penalty_grads"], got["anchored_grads"], grads, raw):
            close(grad, want, rel=1e-6)
            close(added, r + want, rel=1e-6)
        for got_w, want_w in zip(got["anchored_decayed"], decayed):
            close(got_w, want_w, rel=1e-6)


def test_anchored_plain_shards_with_group_give_the_whole_value_and_an_idle_rank_agrees(ranks):
    value, _ = anchored_by_hand(l1=L1)
    anchors, _ = full_anchors()
    w, a = [t.double() for t in full_tensors()], [t.double() for t in anchors]
    idle = sum((0.25 * (w[i][r::WORLD] - a[i][r::WORLD]) ** 2).sum() for i in PULLED for r in range(WORLD - 1))
    for rank in ranks:
        close(rank["plain"]["anchored_penalty"], value)
        close(rank["plain"]["anchored_idle"], idle)


def test_a_rank_with_nothing_to_penalise_takes_part_and_all_agree(ranks):
    w, g = [t.double() for t in full_tensors()[:2]], [t.double() for t in full_grads()[:2]]
    norm = sum((t**2).sum() for t in g).sqrt()
    for r, rank in enumerate(ranks):
        close(rank["idle"]["penalty"], sum(L2 / 2 * (t**2).sum() for t in w))
        close(rank["idle"]["grad_norm"], norm)
        if r < 2:
            clip = min(1.0, 0.5 / (norm.item() + 1e-6))
            close(rank["idle"]["param"], w[r] - 0.1 * (g[r] * clip + L2 * w[r]), rel=1e-6)


@pytest.mark.parametrize("per_example", [False, True])
def test_diagonal_fisher_over_ranks_is_the_mean_over_every_rank_s_samples(ranks, per_example):
    model, batches = regression(batches=4)
    want = by_hand(model, batches, per_example)
    for rank in ranks:
        for name, value in want.items():
            close(rank["fisher"][per_example][name], value, rel=1e-6)
