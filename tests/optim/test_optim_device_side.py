"""What a GPU would show of Penalized's step, shown on the CPU: it refuses CUDA-graph capture (its host
values would be frozen into the graph), it gives each device its own copy of GradScaler's scalars
and the clip coefficient, and it never reads GradScaler's found_inf on the host during the step."""
import pytest
import torch

import l2fast
from l2fast import fused_step

SHAPES = [(7, 5), (33,), (3, 4)]


def params_with_grads(device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=g).to(device).requires_grad_() for s in SHAPES]
    for p in params:
        p.grad = torch.randn(p.shape, generator=g).to(device)
    return params


def test_a_step_under_cuda_graph_capture_is_refused(monkeypatch):
    opt = l2fast.Penalized(torch.optim.Adam(params_with_grads(), lr=1e-2), l2=1e-2)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    before = [p.detach().clone() for p in opt.param_groups[0]["params"]]
    with pytest.raises(RuntimeError, match="cannot be captured in a CUDA graph"):
        opt.step()
    assert all(torch.equal(p, b) for p, b in zip(opt.param_groups[0]["params"], before))
    assert opt.clock.step == 0


def test_capturable_groups_are_refused():
    with pytest.raises(ValueError, match=r"param_groups\[0\] has capturable=True"):
        l2fast.Penalized(torch.optim.Adam(params_with_grads(), lr=1e-2, capturable=True), l2=1e-2)
    opt = l2fast.Penalized(torch.optim.Adam(params_with_grads(), lr=1e-2), l2=1e-2)
    opt.param_groups[0]["capturable"] = True  # as loading a capturable torch Adam's state dict does
    with pytest.raises(ValueError, match="capturable=True"):
        opt.step()


def test_each_device_gets_its_own_copy_of_the_step_scalars():
    """Parameters on two devices (the CPU, and meta standing in for a second GPU: the native checks
    serve its kernel), with grad_scale, found_inf and the clip coefficient on the first, as GradScaler
    and the clip norm leave them."""
    cpu, meta = params_with_grads(), params_with_grads("meta")
    adam = torch.optim.Adam(cpu + meta, lr=1e-2)
    calls, fresh = fused_step.gather(adam, [(1e-2, 0.0)], decoupled=False)
    assert {key[1][0] for key in calls} == {torch.device("cpu"), torch.device("meta")}
    scalars = {"grad_scale": torch.tensor(4.0), "found_inf": torch.tensor([0.0]), "clip": torch.tensor(0.5)}
    with torch.no_grad():
        values = fused_step.run(calls, fresh, scalars)
    assert sorted(value.device.type for _, value in values) == ["cpu", "meta"]
    assert all(scalars[name].device.type == "cpu" for name in scalars)


class ReadRecorder(torch.Tensor):
    """A found_inf that records the step during which the host read it (bool, item, float)."""

    __torch_function__ = torch._C._disabled_torch_function_impl  # results of ops on it are plain tensors
    now = 0  # the step being taken, set by the test
    reads: list = []

    def _record(self):
        ReadRecorder.reads.append((self.step, ReadRecorder.now))

    def __bool__(self):
        self._record()
        return bool(self.as_subclass(torch.Tensor))

    def item(self):
        self._record()
        return self.as_subclass(torch.Tensor).item()

    def __float__(self):
        self._record()
        return float(self.as_subclass(torch.Tensor))


@pytest.mark.parametrize("inner", ["adam", "sgd"])
def test_step_never_reads_found_inf_on_the_host(inner):
    """GradScaler hands found_inf to the one-pass step; the kernels skip on the device and the clock
    learns of a skip one step late. On a GPU a read during the step would wait for the device."""
    flags = [0.0, 0.0, 1.0, 0.0, 1.0, 0.0]
    params = params_with_grads()
    if inner == "adam":
        opt = l2fast.Penalized(torch.optim.Adam(params, lr=1e-2, fused=True), l2=1e-2, max_grad_norm=1.0)
    else:
        opt = l2fast.Penalized(torch.optim.SGD(params, lr=1e-2, momentum=0.9, fused=True), l2=1e-2,
                               max_grad_norm=1.0)
    assert opt.fused and opt._step_supports_amp_scaling
    ReadRecorder.reads = []
    penalties = []
    for k, flag in enumerate(flags):
        ReadRecorder.now = k
        found_inf = torch.tensor([flag]).as_subclass(ReadRecorder)
        found_inf.step = k
        before = [p.detach().clone() for p in params]
        opt.grad_scale, opt.found_inf = torch.tensor(2.0), found_inf  # as GradScaler.step hands them over
        opt.step()
        del opt.grad_scale, opt.found_inf
        unchanged = all(torch.equal(p, b) for p, b in zip(params, before))
        assert unchanged == bool(flag)
        penalties.append(opt.last_penalty.clone())
    ReadRecorder.now = len(flags)
    assert opt.clock.step == flags.count(0.0)
    # SGD reads the first step's flag at once (it decides whether the new momentum buffers are kept).
    read_during_its_step = [step for step, now in ReadRecorder.reads if now == step and not (inner == "sgd" and step == 0)]
    assert read_during_its_step == []
    assert torch.equal(penalties[2], penalties[1]) and torch.equal(penalties[4], penalties[3])


def test_a_loaded_clock_is_not_advanced_by_the_step_before_the_load():
    params = params_with_grads()
    opt = l2fast.Penalized(torch.optim.Adam(params, lr=1e-2, fused=True), l2=1e-2)
    saved = opt.state_dict()  # clock at 0
    opt.grad_scale, opt.found_inf = torch.tensor(1.0), torch.tensor([0.0])
    opt.step()  # taken; the clock learns so when it is next read
    del opt.grad_scale, opt.found_inf
    opt.load_state_dict(saved)
    assert opt.clock.step == 0
    opt.step()
    assert opt.clock.step == 1
