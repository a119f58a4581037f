"""HSDP (FSDP2 on a 2x2 mesh: replicated over one dimension, sharded over the other), four gloo
processes on the CPU, against one process on the global batch: the one-pass step on the local shards,
the penalty summed over the sharded dimension only, clipping by the global norm."""
import pytest
import torch
import torch.distributed as dist

import l2fast
from conftest import run_on_gloo
from test_distributed import TOL, max_diff, run_steps
from test_optim import LAM, make_data, make_model

WORLD = 4
CLIP = 0.05

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")]


def train(model, data):
    optimizer = l2fast.Penalized(torch.optim.Adam(model.parameters(), lr=1e-2), l2=LAM, max_grad_norm=CLIP)
    return optimizer, run_steps(model, optimizer, data)


def job(rank):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("replicate", "shard"))
    model = make_model()
    for layer in (model[0], model[2], model[4]):
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    x, y = make_data()
    rows = slice(rank * len(x) // WORLD, (rank + 1) * len(x) // WORLD)
    optimizer, penalties = train(model, (x[rows], y[rows]))
    return {"params": [p.full_tensor().detach() for p in model.parameters()], "penalties": penalties,
            "fused": optimizer.fused, "grad_norm": optimizer.last_grad_norm}


def test_hsdp_trains_as_one_process_on_the_global_batch(tmp_path):
    ranks = run_on_gloo(job, WORLD, tmp_path)
    model = make_model()
    optimizer, penalties = train(model, make_data())
    for got in ranks:
        assert got["fused"]
        assert max_diff(got["params"], [p.detach() for p in model.parameters()]) <= TOL
        assert got["penalties"] == pytest.approx(penalties, rel=1e-6)
        assert got["grad_norm"].item() == pytest.approx(optimizer.last_grad_norm.item(), rel=1e-6)
