"""Penalized under torch.distributed, two gloo processes on the CPU, against one process on the global batch:

* DistributedDataParallel (replicated parameters): the same parameters, and no communication added;
* FSDP2 (``fully_shard``, DTensor shards): the same parameters, and one all-reduce of the penalty per step;
* hand-made shards with ``shard_group`` (FSDP1 / ZeRO style): the same shards and the global penalty.
"""
import os
from contextlib import contextmanager

import pytest
import torch
import torch.distributed as dist

import l2fast
from conftest import run_on_gloo
from test_optim import LAM, make_data, make_model, task_loss

WORLD = 2
STEPS = 20
TOL = 1e-6

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")]


@contextmanager
def counting_all_reduces():
    """Counts torch.distributed.all_reduce calls made from Python (where Penalized makes its own)."""
    calls = []
    original = dist.all_reduce

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    dist.all_reduce = counted
    try:
        yield calls
    finally:
        dist.all_reduce = original


def penalized_adam(params):
    return l2fast.Penalized(torch.optim.Adam(params, lr=1e-2), l2=LAM)


def run_steps(model, optimizer, data):
    penalties = []
    for _ in range(STEPS):
        optimizer.zero_grad()
        task_loss(model, data).backward()
        optimizer.step()
        penalties.append(optimizer.last_penalty.item())
    return penalties


def local_batch(rank):
    x, y = make_data()
    rows = slice(rank * len(x) // WORLD, (rank + 1) * len(x) // WORLD)
    return x[rows], y[rows]


def ddp_run(rank):
    from torch.nn.parallel import DistributedDataParallel

    model = make_model()
    ddp = DistributedDataParallel(model)
    optimizer = penalized_adam(ddp.parameters())
    with counting_all_reduces() as calls:
        penalties = run_steps(ddp, optimizer, local_batch(rank))
    return {"params": [p.detach().clone() for p in model.parameters()], "penalties": penalties, "all_reduces": len(calls)}


def fsdp_model():
    from torch.distributed.fsdp import fully_shard

    model = make_model()
    for layer in (model[0], model[2], model[4]):
        fully_shard(layer)
    fully_shard(model)
    return model


def fsdp_run(rank, max_grad_norm=None):
    """FSDP2; counts the one-pass calls (the update runs on the local shards)."""
    model = fsdp_model()
    optimizer = l2fast.Penalized(torch.optim.Adam(model.parameters(), lr=1e-2), l2=LAM, max_grad_norm=max_grad_norm)
    one_pass, run = [], l2fast.fused_step.run
    l2fast.fused_step.run = lambda *args: one_pass.append(1) or run(*args)
    try:
        with counting_all_reduces() as calls:
            penalties = run_steps(model, optimizer, local_batch(rank))
    finally:
        l2fast.fused_step.run = run
    return {"params": [p.full_tensor().detach().clone() for p in model.parameters()], "penalties": penalties,
            "all_reduces": len(calls), "one_pass_steps": len(one_pass), "fused": optimizer.fused,
            "grad_norm": optimizer.last_grad_norm}


def dcp_resume_run(rank, out_dir):
    """Six steps under a warm-up schedule on FSDP2, uninterrupted; and three, a save through
    torch.distributed.checkpoint, a fresh model and optimizer loading it, three more."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    def build():
        model = fsdp_model()
        return model, l2fast.Penalized(torch.optim.Adam(model.parameters(), lr=1e-2), l2=LAM,
                                       schedule=l2fast.schedules.Warmup(10))

    data = local_batch(rank)

    def steps(model, optimizer, count):
        for _ in range(count):
            optimizer.zero_grad()
            task_loss(model, data).backward()
            optimizer.step()

    model, optimizer = build()
    steps(model, optimizer, 6)
    uninterrupted = [p.full_tensor().detach().clone() for p in model.parameters()]
    model, optimizer = build()
    steps(model, optimizer, 3)
    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=os.path.join(out_dir, "dcp"))
    model, optimizer = build()
    model_state, optim_state = get_state_dict(model, optimizer)  # initialises the optimizer state
    state = {"model": model_state, "optimizer": optim_state}
    dcp.load(state, checkpoint_id=os.path.join(out_dir, "dcp"))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    clock_after_load = optimizer.clock.step
    steps(model, optimizer, 3)
    return {"uninterrupted": uninterrupted, "resumed": [p.full_tensor().detach().clone() for p in model.parameters()],
            "clock_after_load": clock_after_load, "clock": optimizer.clock.step}


def zero_runs(rank):
    """ZeroRedundancyOptimizer over a DDP model, both ways round: Penalized around ZeRO (the penalty
    over every parameter on every rank, then ZeRO's partitioned step) and ZeRO building Penalized
    over each rank's partition (the one-pass step; shard_group sums the partitions' penalties)."""
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.nn.parallel import DistributedDataParallel

    def around(params):
        return l2fast.Penalized(ZeroRedundancyOptimizer(params, optimizer_class=torch.optim.Adam, lr=1e-2), l2=LAM)

    def within(params):
        def penalized_adam_partition(partition, **options):
            return l2fast.Penalized(torch.optim.Adam(partition, **options), l2=LAM, shard_group=dist.group.WORLD)
        return ZeroRedundancyOptimizer(params, optimizer_class=penalized_adam_partition, lr=1e-2)

    results = {}
    for name, build in (("around", around), ("within", within)):
        model = make_model()
        ddp = DistributedDataParallel(model)
        optimizer = build(ddp.parameters())
        penalized = optimizer if name == "around" else optimizer.optim
        penalties = []
        for _ in range(STEPS):
            optimizer.zero_grad()
            task_loss(ddp, local_batch(rank)).backward()
            optimizer.step()
            penalties.append(penalized.last_penalty.item())
        results[name] = {"params": [p.detach().clone() for p in model.parameters()], "penalties": penalties,
                         "fused": penalized.fused}
    return results


def shard_group_run(rank):
    """Each rank owns alternate rows of each weight, as plain tensors, with gradients of ones."""
    full = [p.detach() for p in make_model().parameters()]
    shards = [w[rank::WORLD].clone().requires_grad_() for w in full]
    optimizer = l2fast.Penalized(torch.optim.SGD(shards, lr=0.1), l2=0.2, l1=0.01, shard_group=dist.group.WORLD)
    for shard in shards:
        shard.grad = torch.ones_like(shard)
    optimizer.step()
    return {"shards": [s.detach().clone() for s in shards], "penalty": optimizer.last_penalty.item()}


def job(rank, out_dir):
    return {"ddp": ddp_run(rank), "fsdp": fsdp_run(rank), "fsdp-clip": fsdp_run(rank, max_grad_norm=0.05),
            "shard_group": shard_group_run(rank), "dcp": dcp_resume_run(rank, out_dir), "zero": zero_runs(rank)}


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("distributed")
    return run_on_gloo(job, WORLD, out_dir, str(out_dir))


def single_process_run(max_grad_norm=None):
    model = make_model()
    optimizer = l2fast.Penalized(torch.optim.Adam(model.parameters(), lr=1e-2), l2=LAM, max_grad_norm=max_grad_norm)
    penalties = run_steps(model, optimizer, make_data())
    return {"params": [p.detach() for p in model.parameters()], "penalties": penalties, "grad_norm": optimizer.last_grad_norm}


@pytest.fixture(scope="module")
def single_process():
    return single_process_run()


def max_diff(a, b):
    return max((p - q).abs().max().item() for p, q in zip(a, b))


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_matches_one_process_on_the_global_batch(ranks, single_process, mode):
    initial = [p.detach() for p in make_model().parameters()]
    assert max_diff(single_process["params"], initial) > 1e-2  # training moved the weights
    for rank in ranks:
        assert max_diff(rank[mode]["params"], single_process["params"]) <= TOL
        assert rank[mode]["penalties"] == pytest.approx(single_process["penalties"], rel=1e-6)


def test_replicated_parameters_add_no_communication(ranks):
    assert [rank["ddp"]["all_reduces"] for rank in ranks] == [0, 0]


def test_sharded_penalty_is_all_reduced_once_per_step(ranks):
    assert [rank["fsdp"]["all_reduces"] for rank in ranks] == [STEPS, STEPS]


def test_shard_group_gives_the_global_penalty_and_local_updates(ranks):
    full = [p.detach() for p in make_model().parameters()]
    want_penalty = sum(0.1 * w.double().pow(2).sum().item() + 0.01 * w.double().abs().sum().item() for w in full)
    want = [w - 0.1 * (1.0 + 0.2 * w + 0.01 * w.sign()) for w in full]
    for r, rank in enumerate(ranks):
        assert rank["shard_group"]["penalty"] == pytest.approx(want_penalty, rel=1e-6)
        for shard, w in zip(rank["shard_group"]["shards"], want):
            torch.testing.assert_close(shard, w[r::WORLD], rtol=0, atol=1e-6)


def test_fsdp2_takes_the_one_pass_step_on_local_shards(ranks, single_process):
    clipped = single_process_run(max_grad_norm=0.05)
    for rank in ranks:
        assert rank["fsdp"]["fused"] and rank["fsdp"]["one_pass_steps"] == STEPS
        got = rank["fsdp-clip"]
        assert got["one_pass_steps"] == STEPS
        assert max_diff(got["params"], clipped["params"]) <= TOL
        assert got["penalties"] == pytest.approx(clipped["penalties"], rel=1e-6)
        assert type(got["grad_norm"]) is torch.Tensor
        assert got["grad_norm"].item() == pytest.approx(clipped["grad_norm"].item(), rel=1e-6)


def test_dcp_checkpoint_mid_schedule_resumes_as_uninterrupted(ranks):
    for rank in ranks:
        assert rank["dcp"]["clock_after_load"] == 3 and rank["dcp"]["clock"] == 6
        assert max_diff(rank["dcp"]["resumed"], rank["dcp"]["uninterrupted"]) == 0.0


@pytest.mark.parametrize("composition", ["around", "within"])
def test_zero_redundancy_optimizer_both_ways_round(ranks, single_process, composition):
    for rank in ranks:
        got = rank["zero"][composition]
        assert got["fused"] == (composition == "within")
        assert max_diff(got["params"], single_process["params"]) <= TOL
        assert got["penalties"] == pytest.approx(single_process["penalties"], rel=1e-6)
