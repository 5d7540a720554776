"""The local branch's 16 extractors (Sec. III-B): one batched module against the 16-module loop.

`GroupedLocalExtractors` runs the 16 crop extractors as grouped convolutions and a batched
attention; `extractor(i)` copies crop i's weights into a plain `LocalExtractor`. This times
forward + backward of both on the same weights and the same crops, for the tiny and the
paper presets' local-branch sizes, on the CPU (and on CUDA when present), checks that
outputs and weight gradients agree, and prints the ratio. The two run in turn (A B A B ...),
the ratio is of the medians (and of the best times); FLOPs come from FlopCounterMode (forward + backward), so
the achieved GFLOP/s sit beside a plain matmul's rate on the same threads.

python bench/local_branch.py
python bench/local_branch.py --threads 2 --rounds 7 --tiny-batch 2,32 --paper-batch 4
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from glee.model import GLEEConfig
from glee.model.local_branch import NUM_CROPS, GroupedLocalExtractors
from glee.model.summary import count_flops


def _randomise(module: nn.Module, seed: int) -> None:
    """Non-zero attention gamma and BN affine parameters, so every path counts in the check."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "gamma" in name or p.dim() == 1:
                p.copy_(0.5 + torch.rand(p.shape, generator=gen))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_gflops(device: torch.device, n: int = 1024, reps: int = 10) -> float:
    """fp32 matmul rate on `device` at the current thread count: the ceiling to compare with."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    a @ b
    best = float("inf")
    for _ in range(3):
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 * reps / best / 1e9


def bench_one(preset: str, batch: int, device: torch.device, rounds: int) -> dict[str, float | str]:
    cfg = {"tiny": GLEEConfig.tiny, "paper": GLEEConfig.paper}[preset]()
    s = cfg.local_crop_size
    torch.manual_seed(0)
    batched = GroupedLocalExtractors(cfg.local_channels, cfg.local_attention_dim)
    _randomise(batched, seed=0)
    batched = batched.to(device).train()
    loop = nn.ModuleList([batched.extractor(i) for i in range(NUM_CROPS)]).to(device).train()
    crops = torch.randn(batch, NUM_CROPS, 3, s, s, device=device)  # (B, 16, 3, s, s)

    def run_batched() -> torch.Tensor:
        out = batched(crops)  # (B, 16, C)
        out.square().sum().backward()
        return out

    def run_loop() -> torch.Tensor:
        out = torch.stack([ext(crops[:, i]) for i, ext in enumerate(loop)], dim=1)
        out.square().sum().backward()
        return out

    # The check: same outputs and same weight gradients, forward + backward.
    for m in (batched, loop):
        m.zero_grad(set_to_none=True)
    out_b, out_l = run_batched(), run_loop()
    out_diff = (out_b - out_l).abs().max().item()
    grad_b = batched.convs[0].weight.grad.chunk(NUM_CROPS, dim=0)
    grad_l = torch.cat([ext.convs[0].weight.grad for ext in loop])
    # Relative to the largest gradient: the two sum the same terms in another order.
    grad_diff = ((torch.cat(grad_b) - grad_l).abs().max() / grad_l.abs().max()).item()

    # The batched module in channels_last (the trainers' option), same weights.
    batched_cl = GroupedLocalExtractors(cfg.local_channels, cfg.local_attention_dim)
    batched_cl.load_state_dict(batched.state_dict())
    batched_cl = batched_cl.to(device, memory_format=torch.channels_last).train()

    def run_batched_cl() -> torch.Tensor:
        out = batched_cl(crops)
        out.square().sum().backward()
        return out

    variants: dict[str, Callable[[], torch.Tensor]] = {
        "batched": run_batched,
        "loop": run_loop,
        "channels_last": run_batched_cl,
    }
    flops = count_flops(run_batched).total  # forward + backward of one step
    times: dict[str, list[float]] = {k: [] for k in variants}
    for fn in variants.values():
        fn()  # warm-up
    for _ in range(rounds):
        for name, fn in variants.items():
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    row: dict[str, float | str] = {
        "preset": preset,
        "batch": batch,
        "device": device.type,
        "out_diff": out_diff,
        "grad_diff": grad_diff,
        "ratio": med["loop"] / med["batched"],
        "ratio_min": min(times["loop"]) / min(times["batched"]),
    }
    for name, t in med.items():
        row[f"{name}_ms"] = t * 1e3
        row[f"{name}_gflops"] = flops / t / 1e9
    return row


def _print_row(row: dict[str, float | str]) -> None:
    print(
        f"{row['device']:>4} {row['preset']:<5} B={row['batch']:<3} "
        f"batched {row['batched_ms']:8.1f} ms ({row['batched_gflops']:5.1f} GFLOP/s)  "
        f"loop {row['loop_ms']:8.1f} ms ({row['loop_gflops']:5.1f} GFLOP/s)  "
        f"ratio {row['ratio']:.2f} (best-of {row['ratio_min']:.2f}); batched channels_last "
        f"{row['channels_last_ms']:.1f} ms (x{row['loop_ms'] / row['channels_last_ms']:.2f})  "
        f"max|diff| out {row['out_diff']:.1e}, first-conv grad {row['grad_diff']:.1e} (rel)",
        flush=True,
    )


def _batches(text: str) -> list[int]:
    return [int(b) for b in text.split(",") if b]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tiny-batch", type=_batches, default=[2, 32])
    parser.add_argument("--paper-batch", type=_batches, default=[1, 4])
    parser.add_argument("--cuda-batch", type=int, default=32, help="both presets on CUDA")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    print(
        f"local branch, forward + backward, {args.rounds} rounds, torch {torch.__version__}, "
        f"{args.threads} CPU thread(s), load average {os.getloadavg()[0]:.1f}; "
        f"fp32 matmul {matmul_gflops(cpu):.0f} GFLOP/s on the same threads",
        flush=True,
    )
    runs = [("tiny", b, cpu) for b in args.tiny_batch]
    runs += [("paper", b, cpu) for b in args.paper_batch]
    if torch.cuda.is_available():
        gpu = torch.device("cuda")
        rate = matmul_gflops(gpu, 4096)
        print(f"{torch.cuda.get_device_name(gpu)}: fp32 matmul {rate:.0f} GFLOP/s", flush=True)
        runs += [(p, args.cuda_batch, gpu) for p in ("tiny", "paper")]
    else:
        print("no CUDA device: CPU only", flush=True)
    for preset, batch, device in runs:
        _print_row(bench_one(preset, batch, device, args.rounds))
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
