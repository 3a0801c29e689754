"""CUDA benchmark: fused softmax cross entropy (loss + gradient) on a GPU, against PyTorch eager
and the two-pass floor (the logits read once and the gradient written once, at the bandwidth of a
device-to-device copy of the same bytes measured in the same run).

    python benchmarks/bench_gpu.py [--repeat 20] [--rows 8192] [--classes 32000 128256]
                                   [--dtypes float32 bfloat16] [--json]

Needs a CUDA device, PyTorch with CUDA and a CUDA build of xentkit. Times are CUDA-event times on
the current stream (median of --repeat runs after warm-up); every run includes the allocation of
the outputs, as a user's call does. Effective bandwidth = bytes moved by the 2-pass floor / time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys


def _time(fn, repeat, torch):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        start = torch.cuda.Event(enable_timing=True)
        stop = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop) * 1e-3)
    return statistics.median(times)


def run(rows, classes, dtypes, repeat):
    import torch
    import torch.nn.functional as F

    import xentkit

    if not (torch.cuda.is_available() and xentkit.cuda_available()):
        raise SystemExit("bench_gpu: needs a CUDA device, PyTorch with CUDA and xentkit built with CUDA")
    gen = torch.Generator(device="cuda").manual_seed(0)
    out = []
    for c in classes:
        for name in dtypes:
            dt = getattr(torch, name)
            x = (torch.randn(rows, c, device="cuda", generator=gen) * 3).to(dt)
            y = torch.randint(0, c, (rows,), device="cuda", generator=gen)
            nbytes = x.numel() * x.element_size()
            dst = torch.empty_like(x)
            t_copy = _time(lambda: dst.copy_(x), repeat, torch)
            copy_bw = 2 * nbytes / t_copy

            t_xk = _time(lambda: xentkit.cross_entropy(x, y, grad=True), repeat, torch)
            t_xk_loss = _time(lambda: xentkit.cross_entropy(x, y), repeat, torch)

            xr = x.detach().clone().requires_grad_(True)

            def torch_fwd_bwd():
                loss = F.cross_entropy(xr, y)
                (g,) = torch.autograd.grad(loss, xr)
                return g

            t_torch = _time(torch_fwd_bwd, repeat, torch)
            t_torch_fwd = _time(lambda: F.cross_entropy(x, y), repeat, torch)

            # Agreement with PyTorch on this very input (float32 rounding of the storage type).
            loss_xk, grad_xk = xentkit.cross_entropy(x, y, grad=True)
            g_ref = torch_fwd_bwd()
            loss_ref = F.cross_entropy(x.float(), y)
            err_grad = (grad_xk.float() - g_ref.float()).abs().max().item()
            err_loss = abs(float(loss_xk) - float(loss_ref))
            out.append({
                "rows": rows, "classes": c, "dtype": name,
                "copy_GBps": copy_bw / 1e9,
                "xentkit_ms": t_xk * 1e3, "xentkit_TBps": 2 * nbytes / t_xk / 1e12,
                "xentkit_fraction_of_copy": (2 * nbytes / t_xk) / copy_bw,
                "torch_ms": t_torch * 1e3, "speedup_vs_torch": t_torch / t_xk,
                "xentkit_loss_only_ms": t_xk_loss * 1e3,
                "xentkit_loss_only_TBps": nbytes / t_xk_loss / 1e12,
                "torch_forward_ms": t_torch_fwd * 1e3,
                "max_abs_grad_diff": err_grad, "abs_loss_diff": err_loss,
            })
            del x, dst, xr
            torch.cuda.empty_cache()
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=8192)
    p.add_argument("--classes", type=int, nargs="+", default=[32000, 128256])
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    res = run(a.rows, a.classes, a.dtypes, a.repeat)
    if a.json:
        print(json.dumps(res, indent=1))
        return 0
    import torch

    print(f"device: {torch.cuda.get_device_name()}  rows={a.rows}  median of {a.repeat}")
    print("| C | dtype | copy GB/s | xentkit ms | xentkit TB/s | % of copy | torch ms | speed-up |"
          " loss-only ms | torch fwd ms | max grad diff |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in res:
        print(f"| {r['classes']} | {r['dtype']} | {r['copy_GBps']:.0f} | {r['xentkit_ms']:.3f} | "
              f"{r['xentkit_TBps']:.2f} | {100 * r['xentkit_fraction_of_copy']:.0f}% | "
              f"{r['torch_ms']:.3f} | {r['speedup_vs_torch']:.2f}x | "
              f"{r['xentkit_loss_only_ms']:.3f} | {r['torch_forward_ms']:.3f} | "
              f"{r['max_abs_grad_diff']:.2e} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
