"""Without the compiled library l2fast runs on reference.py, says so once, and gives the same answers."""
import os
import subprocess
import sys

SCRIPT = """
import sys, warnings
sys.modules["l2fast._C"] = None  # as if the native library were missing
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import l2fast, torch
print(l2fast.backend(), sum("native library not available" in str(w.message) for w in caught))
w = torch.tensor([3.0, -4.0], requires_grad=True)
value = l2fast.penalty([w], l2=0.5, l1=0.25)
value.backward()
g = torch.ones(2)
print(value.item(), w.grad.tolist(), l2fast.add_penalty_grad_([w.detach()], [g], l2=0.5).item(), g.tolist())
_, hvp = torch.autograd.functional.hvp(lambda w: l2fast.penalty([w], l2=0.3), w.detach(), torch.ones(2))
print(l2fast.sq_norm([]).item(), hvp.tolist())
try:
    l2fast.decay_([g, g], 0.1)
except RuntimeError as error:
    print(error)
"""


def run(env_extra):
    env = {k: v for k, v in os.environ.items() if k != "L2FAST_REQUIRE_NATIVE"} | env_extra
    return subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=120)


def test_reference_backend_when_native_library_is_missing():
    result = run({})
    assert result.returncode == 0, result.stderr
    backend_line, values_line, more_line, error_line = result.stdout.splitlines()
    assert backend_line == "reference 1"
    # 0.25 * 25 + 0.25 * 7; gradient 0.5 w + 0.25 sign(w); grads 1 + 0.5 w
    assert values_line == "8.0 [1.75, -2.25] 6.25 [2.5, -1.0]"
    # empty lists are an empty sum; second derivatives hold; the native ops' checks run here too
    assert more_line == "0.0 [0.30000001192092896, 0.30000001192092896]"
    assert error_line.startswith("l2fast: params[0] and params[1] are the same memory")


def test_require_native_turns_a_missing_library_into_an_error():
    result = run({"L2FAST_REQUIRE_NATIVE": "1"})
    assert result.returncode != 0
    assert "L2FAST_REQUIRE_NATIVE=1 but the native library did not load" in result.stderr
