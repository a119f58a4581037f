"""The torch-version contract, the console script's edges and the build script's choices.

Each import check runs in a fresh interpreter: what l2fast does at import is the thing under test.
"""
import importlib.util
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

import l2fast

ROOT = Path(__file__).resolve().parent.parent
in_source_tree = pytest.mark.skipif(not (ROOT / "setup.py").is_file(), reason="needs the source tree")
in_git_checkout = pytest.mark.skipif(not (ROOT / ".git").exists(), reason="needs a git checkout")

# A stand-in record: the native library claims to be built against a torch of another minor version.
OTHER_TORCH = "1.99.0"
FAKE_BUILD_INFO = f"""
import sys, types
sys.modules["l2fast._build_info"] = types.SimpleNamespace(TORCH_VERSION={OTHER_TORCH!r}, CUDA_VERSION=None)
"""

# Loading _C fails as a library built against another torch fails: an undefined C++ symbol.
UNDEFINED_SYMBOL = """
import sys
class Broken:
    def find_spec(self, name, path=None, target=None):
        if name == "l2fast._C":
            raise ImportError("_C.abi3.so: undefined symbol: _ZN3c1010TensorImpl7is_metaEv")
sys.meta_path.insert(0, Broken())
"""

REPORT = """
import warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import l2fast
print(l2fast.backend())
print(l2fast.backend_reason())
print("l2fast._C" in sys.modules, len(caught))
print(l2fast.sq_norm([__import__("torch").tensor([3.0, 4.0])]).item())
"""


def run_python(code, env_extra=None, args=()):
    env = {k: v for k, v in os.environ.items() if k != "L2FAST_REQUIRE_NATIVE"} | (env_extra or {})
    return subprocess.run([sys.executable, *args, *(["-c", code] if code else [])], capture_output=True,
                          text=True, env=env, timeout=120, cwd=ROOT)


def test_version_mismatch_falls_back_before_loading_the_library_and_names_both_versions():
    result = run_python(FAKE_BUILD_INFO + REPORT)
    assert result.returncode == 0, result.stderr
    backend, reason, loaded_and_warnings, value = result.stdout.splitlines()
    assert backend == "reference"
    assert f"built against torch {OTHER_TORCH} but torch {torch.__version__} is installed" in reason
    assert "rebuild l2fast for this torch: pip install --no-build-isolation" in reason
    assert loaded_and_warnings == "False 1"  # never loaded: a mismatched library may crash, not just fail
    assert float(value) == 25.0


def test_version_mismatch_is_an_error_when_native_is_required():
    result = run_python(FAKE_BUILD_INFO + "import l2fast", {"L2FAST_REQUIRE_NATIVE": "1"})
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert "L2FAST_REQUIRE_NATIVE=1" in last and OTHER_TORCH in last and torch.__version__ in last


def test_a_library_that_fails_to_load_says_to_rebuild_for_this_torch():
    result = run_python("import sys\n" + UNDEFINED_SYMBOL + REPORT)
    assert result.returncode == 0, result.stderr
    backend, reason, *_ = result.stdout.splitlines()
    assert backend == "reference"
    assert "undefined symbol" in reason and "rebuild l2fast for this torch: pip install" in reason


def test_cuda_version_of_the_build_must_match_torchs():
    from l2fast import _native

    running = torch.__version__
    assert _native.version_mismatch(running, None) is None
    assert _native.version_mismatch(running.split("+")[0] + "+other", None) is None  # local tags do not matter
    cuda_mismatch = _native.version_mismatch(running, "99.0")
    assert cuda_mismatch is not None and "CUDA 99.0" in cuda_mismatch


@pytest.mark.skipif(l2fast.backend() != "native", reason="needs the native build")
def test_a_build_records_the_torch_it_was_built_against():
    from l2fast import _build_info

    assert _build_info.TORCH_VERSION == torch.__version__
    assert f"built against torch {torch.__version__}" in l2fast.backend_reason()


def test_version_flag_prints_one_line():
    result = run_python(None, args=("-m", "l2fast", "--version"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [result.stdout.strip()]
    assert result.stdout.startswith(f"l2fast {l2fast.__version__} (torch {torch.__version__}; backend ")


def test_trainer_without_the_train_extra_names_the_extra_in_one_line():
    # Every module of the extra hidden, whatever this environment has installed: all are named.
    code = ('import sys\nfrom l2fast.__main__ import TRAIN_EXTRA_MODULES, main\n'
            'sys.modules.update(dict.fromkeys(TRAIN_EXTRA_MODULES))\nsys.exit(main(sys.argv[1:]))')
    tomli = ", tomli" if sys.version_info < (3, 11) else ""  # tomllib is in the standard library from 3.11
    missing = f"(missing: matplotlib, sacrebleu, sentencepiece, tqdm{tomli}): pip install 'l2fast[train]'"
    for args, who in ((["--help"], "l2fast: the translation trainer"), (["lm", "--help"], "l2fast lm: the language-model trainer")):
        result = run_python(None, args=("-c", code, *args))
        assert result.returncode == 1
        assert result.stdout == ""
        assert result.stderr.strip().splitlines() == [f"{who} needs the train extra {missing}"]


@in_source_tree
def test_the_extra_hint_knows_every_module_of_the_train_extra_and_nmt_is_its_alias():
    import tomllib

    from l2fast.__main__ import TRAIN_EXTRA_MODULES

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    distributions = {req.split(";")[0].split(">")[0].split("=")[0].strip() for req in extras["train"]}
    assert distributions == TRAIN_EXTRA_MODULES  # each of these distributions imports under its own name
    assert extras["nmt"] == ["l2fast[train]"]  # the extra's earlier name installs the same


def load_setup_module():
    spec = importlib.util.spec_from_file_location("l2fast_setup", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # defines functions only: setup() runs under __main__
    return module


@in_source_tree
def test_cuda_build_without_a_gpu_uses_the_default_arch_list(monkeypatch):
    setup = load_setup_module()
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert setup.cuda_arch_list(torch) == setup.DEFAULT_CUDA_ARCHS == "7.5;8.0;9.0+PTX"
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert setup.cuda_arch_list(torch) is None  # torch chooses for the visible GPU
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.6")
    assert setup.cuda_arch_list(torch) == "8.6"


@in_source_tree
def test_build_flags_drop_debug_info_unless_asked_and_pin_the_torch_minor():
    setup = load_setup_module()
    assert "-g0" in setup.compile_args(cuda=False, debug=False)["cxx"]
    assert "-lineinfo" not in setup.compile_args(cuda=True, debug=False)["nvcc"]
    debug = setup.compile_args(cuda=True, debug=True)
    assert "-g" in debug["cxx"] and "-lineinfo" in debug["nvcc"]
    major, minor = torch.__version__.split(".")[:2]
    assert setup.torch_requirement(torch) == f"torch=={major}.{minor}.*"


@in_source_tree
def test_building_without_torch_stops_at_once_with_the_no_build_isolation_advice(tmp_path):
    code = f'import sys; sys.modules["torch"] = None; sys.argv = ["setup.py", "bdist_wheel"]\n' \
           f'exec(compile(open({str(ROOT / "setup.py")!r}).read(), "setup.py", "exec"), {{"__name__": "__main__"}})'
    result = run_python(code)
    assert result.returncode != 0
    assert "pip install --no-build-isolation ." in result.stderr
    assert "Traceback" not in result.stderr


@in_git_checkout
def test_sdist_holds_every_source_and_header_and_no_build_record(tmp_path):
    result = subprocess.run([sys.executable, "setup.py", "-q", "sdist", "--dist-dir", str(tmp_path)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    (sdist,) = tmp_path.glob("l2fast-*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    tracked = subprocess.run(["git", "ls-files", "csrc", "tests", "l2fast", "LICENSE"], cwd=ROOT, capture_output=True,
                             text=True).stdout.split()
    assert tracked and not set(tracked) - names
    assert "l2fast/_build_info.py" not in names
