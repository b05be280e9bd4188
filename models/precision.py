"""Which floating-point type a model runs in: one rule for the server, the indexer and the benches.

`auto` is fp16 on CUDA (half the bytes and tensor cores; bench/bench_gpu.py measures its cosine to fp32)
and fp32 everywhere else: CPUs without fast half-precision kernels run fp16 slower than fp32. An explicit
fp32/fp16/bf16 is honoured on any device (bf16 suits CPUs with AMX, and GPUs where fp16 overflows).
torch is imported inside the functions: the CLI's option types come from here and load no torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, get_args

if TYPE_CHECKING:
    import torch

Precision = Literal["auto", "fp32", "fp16", "bf16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)


def dtypes() -> dict[str, torch.dtype]:
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def choose_dtype(device: torch.device | str, precision: str = "auto") -> torch.dtype:
    """The model's dtype on `device` for the `precision` setting (auto: fp16 on CUDA, else fp32)."""
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return torch.float16 if torch.device(device).type == "cuda" else torch.float32
    return dtypes()[precision]


def precision_name(dtype: torch.dtype) -> str:
    """fp32, fp16 or bf16: the name a journal signature or a bench row records."""
    for name, known in dtypes().items():
        if known == dtype:
            return name
    return str(dtype).removeprefix("torch.")
