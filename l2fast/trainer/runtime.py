"""Where a run executes and what it writes as it goes: device, threads and process group;
messages to the console and train.log; metrics rows to metrics.jsonl."""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist


@dataclass
class Environment:
    device: torch.device
    rank: int = 0
    world_size: int = 1
    owns_group: bool = False  # setup_environment started the process group: close() ends it

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def close(self) -> None:
        """At the end of a run: every process arrives, then the process group this run started is
        destroyed. A process that exits while a peer still holds the group's connections can take the
        peer's gloo threads down with it (std::terminate as the peer exits: a run that finished failed)."""
        if self.owns_group and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()

    def any(self, flag: bool) -> bool:
        """flag of any process, on every process: decisions taken on one process's own measurements (its
        clock) must be taken by all, or the ones that go on wait forever in a collective."""
        if not self.distributed:
            return flag
        value = torch.tensor([int(flag)], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())


def setup_environment(threads: int = 0) -> Environment:
    """Device, threads and (under torchrun) the process group: gloo on CPU, NCCL on GPU."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    # Tiny values in Adam's second moments and in activations become denormal floats, which x86 CPUs
    # handle several times slower: training measured 3-8x slower per step after a few hundred steps.
    torch.set_flush_denormal(True)
    # Processes on one CPU share its cores; oversubscribed threads only fight each other.
    torch.set_num_threads(threads or max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", world_size))))
    owns_group = world_size > 1 and not dist.is_initialized()
    if owns_group:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Environment(device, rank, world_size, owns_group)


def timestamped(message: str) -> str:
    return f"{time.strftime('%Y-%m-%d %H:%M:%S')} | {message}"


class RunLog:
    """Messages, each with the local time, to the console (main process) and to RUN_DIR/train.log;
    metrics rows to metrics.jsonl."""

    def __init__(self, run_dir: Path, enabled: bool):
        self.run_dir, self.enabled = run_dir, enabled
        self.metrics_path = run_dir / "metrics.jsonl"

    def __call__(self, message: str) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm  # writes above any progress bar
        line = timestamped(message)
        tqdm.write(line)
        with open(self.run_dir / "train.log", "a", encoding="utf-8") as f:
            f.write(line + "\n")

    def metrics(self, row: dict) -> None:
        if self.enabled:
            with open(self.metrics_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")

    def truncate_metrics(self, step: int) -> None:
        """Drops rows written after the checkpoint a resumed run starts from, and lines that are not
        whole rows (a process killed mid-write leaves a torn last line), saying which."""
        if not (self.enabled and self.metrics_path.exists()):
            return
        kept, torn = [], []
        for number, line in enumerate(self.metrics_path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
            try:
                row = json.loads(line)
                after = row["step"] > step
            except (json.JSONDecodeError, TypeError, KeyError):
                torn.append(number)
                continue
            if not after:
                kept.append(line)
        self.metrics_path.write_text("".join(r + "\n" for r in kept), encoding="utf-8")
        if torn:
            self(f"{self.metrics_path}: dropped {len(torn)} unreadable line(s) (line {', '.join(map(str, torn[:5]))}), "
                 "left by a process killed while writing")
