"""Shared pieces of the benchmark scripts: parameter sets, a timer, table printing, and the raw-run log
(``record``: one JSON line per run in bench/results/<bench>.jsonl)."""
from __future__ import annotations

import contextlib
import datetime
import functools
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch


def transformer_base_shapes(vocab: int = 37000, d: int = 512, ff: int = 2048, layers: int = 6) -> list[tuple]:
    """Parameter shapes of a Transformer-base translation model (shared embedding): ~63M in ~257 tensors."""
    attention = [(d, d), (d,)] * 4
    feed_forward = [(ff, d), (ff,), (d, ff), (d,)]
    norm = [(d,), (d,)]
    encoder = attention + feed_forward + norm * 2
    decoder = attention * 2 + feed_forward + norm * 3
    return [(vocab, d)] + encoder * layers + decoder * layers + norm * 2


PARAM_SETS = {
    "transformer-base": lambda: transformer_base_shapes(),
    "1x100M": lambda: [(100_000_000,)],
    "10kx1k": lambda: [(1000,)] * 10_000,
}


def make_params(shapes, device, dtype=torch.float32, seed=0) -> list[torch.Tensor]:
    g = torch.Generator(device=device).manual_seed(seed)
    return [torch.randn(s, generator=g, device=device, dtype=dtype) for s in shapes]


def round_seconds(methods: dict, device: str, rounds: int = 15, warmup: int = 2, before=None) -> dict:
    """Wall time of each fn() in methods, one entry per round. Every round runs each method once, so
    drift in the machine's speed (other load, clocks) hits all of them alike, and the times of one
    round can be compared with each other; device work is synchronised around each call.

    Each round runs the methods in its own order (seeded by the round, so runs repeat): in a fixed
    order every method always follows the same one, and on CPU with a core busy the op that ran just
    before changes where the scheduler puts torch's worker threads (docs/cpu.md, "What ran just
    before"). before(), if given, runs untimed ahead of every call: a barrier, so that processes
    timed together start each call together (a method with a collective would otherwise wait out the
    others' lag from the method before)."""
    cuda = device.startswith("cuda")
    for fn in methods.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in methods}
    for r in range(rounds):
        for name in random.Random(r).sample(list(methods), len(methods)):
            fn = methods[name]
            if before is not None:
                before()
            if cuda:
                begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                begin.record()
                fn()
                end.record()
                end.synchronize()
                times[name].append(begin.elapsed_time(end) / 1e3)
            else:
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    return times


def medians(per_round: dict) -> dict:
    """Each method's median over its rounds."""
    return {name: statistics.median(ts) for name, ts in per_round.items()}


def median_seconds(methods: dict, device: str, rounds: int = 15, warmup: int = 2, before=None) -> dict:
    """Median wall time of each fn() in methods (round_seconds' rounds)."""
    return medians(round_seconds(methods, device, rounds, warmup, before))


def paired_ratio(numerators: list, denominators: list) -> tuple:
    """Median and interquartile range of the per-round ratios of two methods timed in the same rounds."""
    ratios = [n / d for n, d in zip(numerators, denominators, strict=True)]
    if len(ratios) < 2:
        return ratios[0], ratios[0], ratios[0]
    q1, median, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
    return median, q1, q3


def machine(device: str) -> str:
    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__})"
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads (torch {torch.__version__})"


def header(title: str, device: str, command: str) -> str:
    today = datetime.date.today().isoformat()
    return (f"### {title}\n\nMachine: {machine(device)}. Date: {today}. Commit: {commit_label()}. "
            f"Command: `{command}`\n")


def table(columns: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def table_records(columns: list[str], rows: list[list[str]]) -> list[dict]:
    """A printed table as data: one {column: cell} per row, cells as printed."""
    return [dict(zip(columns, row, strict=True)) for row in rows]


def parse_table(text: str) -> tuple[list[str], list[list[str]]]:
    """The columns and rows of the first markdown table in text (([], []) where there is none)."""
    lines = [line.strip() for line in text.splitlines()]
    for i, line in enumerate(lines[:-1]):
        if line.startswith("|") and lines[i + 1].startswith("|") and set(lines[i + 1]) <= set("|-: "):
            cells = lambda row: [c.strip() for c in row.strip("|").split("|")]
            rows = []
            for row in lines[i + 2:]:
                if not row.startswith("|"):
                    break
                rows.append(cells(row))
            return cells(line), rows
    return [], []


# x86-64-v3 in /proc/cpuinfo flag names: the level of the clone that l2fast's CPU loops run where present.
X86_64_V3_FLAGS = ("avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave")
X86_64_V4_FLAGS = X86_64_V3_FLAGS + ("avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl")


def cpuinfo_field(name: str) -> str:
    """The first value of a /proc/cpuinfo field ('' where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.split(":", 1)[0].strip() == name:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def cpu_flags() -> set:
    return set(cpuinfo_field("flags").split())


def memory_pages() -> str:
    """How large tensors are paged: the kernel's transparent-huge-page mode and torch's own switch.
    With 4 KB pages a stream's speed depends on where its pages landed (docs/cpu.md)."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            mode = f.read().split("[", 1)[1].split("]", 1)[0]
    except (OSError, IndexError):
        mode = "unknown"
    torch_thp = "on" if os.environ.get("THP_MEM_ALLOC_ENABLE", "0") not in ("", "0") else "off"
    return f"transparent huge pages {mode}, torch THP_MEM_ALLOC_ENABLE {torch_thp}"


SIMD_FLAGS = ("avx512f", "avx512bw", "avx512vl", "avx512_bf16", "avx512_fp16", "amx_tile", "avx2")


def cpu_isa() -> str:
    """One line: the CPU model, torch's CPU capability, the AVX-512 / AVX2 flags, the level of l2fast's
    CPU loops, and how memory is paged."""
    flags = cpu_flags()
    simd = ", ".join(f for f in SIMD_FLAGS if f in flags)
    v3, v4 = (all(f in flags for f in needed) for needed in (X86_64_V3_FLAGS, X86_64_V4_FLAGS))
    sums = "x86-64-v3" if v3 else "x86-64 (baseline)"
    one_stream = "x86-64-v4" if v4 else sums
    return (f"CPU: {cpuinfo_field('model name') or 'unknown'}. "
            f"ISA: torch CPU capability {torch.backends.cpu.get_cpu_capability()}; CPU flags {simd or 'none of AVX2/AVX-512'}; "
            f"l2fast CPU loops: sums {sums} clone, one-stream loops (gradient, decay, optimizer steps) {one_stream} clone. "
            f"Memory: {memory_pages()}.")


REPO = Path(__file__).resolve().parent.parent
# Where record() appends; L2FAST_BENCH_RESULTS names another folder, or "off" for none (smoke runs).
RESULTS = REPO / "bench" / "results"


@functools.cache
def git_state() -> dict:
    """The commit checked out and whether tracked files differ from it (None outside a git checkout):
    a number is only worth keeping with the code that produced it."""
    def git(*args):
        try:
            done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "--short=12", "HEAD")
    changes = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "local_changes": None if changes is None else bool(changes)}


def commit_label() -> str:
    state = git_state()
    if not state["commit"]:
        return "unknown"
    return state["commit"][:7] + (" with local changes" if state["local_changes"] else "")


def machine_info(device: str) -> dict:
    """What a number depends on besides the code: CPU model and ISA level, threads, torch, paging."""
    flags = cpu_flags()
    v3, v4 = (all(f in flags for f in needed) for needed in (X86_64_V3_FLAGS, X86_64_V4_FLAGS))
    info = {
        "arch": platform.machine(),
        "cpu": cpuinfo_field("model name") or platform.processor() or None,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "threads": torch.get_num_threads(),
        "isa_level": "x86-64-v4" if v4 else "x86-64-v3" if v3 else platform.machine(),
        "isa_flags": [f for f in SIMD_FLAGS if f in flags],
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "memory": memory_pages(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    return info


def record(bench: str, results: dict, device: str = "cpu", command: str | None = None) -> Path | None:
    """Append one raw run as a JSON line to bench/results/<bench>.jsonl: date, command, commit, machine,
    and the results (the printed tables as data, plus whatever raw times the script keeps). Every bench
    script calls this once per run, so the history of a number is data to read, not prose to edit."""
    folder = os.environ.get("L2FAST_BENCH_RESULTS", str(RESULTS))
    if folder.lower() in ("", "0", "off", "none"):
        return None
    try:
        import l2fast

        backend = l2fast.backend()
    except Exception:  # the record says so rather than losing the run
        backend = None
    line = {
        "bench": bench,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command or " ".join(["python", *sys.argv]),
        **git_state(),
        "l2fast_backend": backend,
        "device": device,
        "machine": machine_info(device),
        "results": results,
    }
    path = Path(folder) / f"{bench}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(line) + "\n")  # one write of one line: concurrent runs do not interleave
    print(f"\n(raw run appended to {path})", file=sys.stderr)
    return path


@contextlib.contextmanager
def busy_core(core: int | None = None):
    """Another process spinning on one core (the last one unless given) while the block runs."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    pin = (lambda: os.sched_setaffinity(0, {core if core is not None else cores[-1]})) if cores else None
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"], preexec_fn=pin)
    try:
        yield
    finally:
        spinner.kill()
        spinner.wait()


@contextlib.contextmanager
def busy_python_thread():
    """A thread of this process running Python code while the block runs (a data loader thread, a
    logger at its worst): a native call that asks for the GIL can wait up to its switch interval."""
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            pass

    thread = threading.Thread(target=spin, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
