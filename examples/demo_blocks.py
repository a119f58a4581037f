"""Training blocks for the framework examples: l2fast's built-in demo stories (made by code, no
download) as bytes, cut into next-token blocks of `length` + 1 byte ids."""
import torch

from l2fast.lm import demo_text


def byte_blocks(count: int, length: int, seed: int = 0) -> torch.Tensor:
    """(count, length + 1) int64 byte ids: inputs are [:, :-1], targets [:, 1:]."""
    text = " ".join(demo_text.generate(count * length // 200 + 8, seed)).encode()
    ids = torch.tensor(list(text[: count * (length + 1)]), dtype=torch.long)
    if ids.numel() < count * (length + 1):
        raise ValueError(f"the demo text is too short for {count} blocks of {length}")
    return ids.view(count, length + 1)
