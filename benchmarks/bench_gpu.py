"""CUDA benchmark: fused softmax cross entropy (loss + gradient) on a GPU, against PyTorch eager,
Liger-Kernel (when it is importable) and the two-pass floor (the logits read once and the gradient
written once, at the bandwidth of a device-to-device copy of the same bytes measured in the same
run); then the host-return check (the first and second call of each function, behind a 200 ms
kernel, must return to the host long before it ends: no call synchronizes).

    python benchmarks/bench_gpu.py [--repeat 20] [--rows 8192] [--classes 128256 32000]
                                   [--dtypes bfloat16 float32] [--json] [--markdown FILE]

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


def _liger():
    """Liger-Kernel's fused cross entropy (loss, with the gradient computed in the forward), or
    None when it is not installed."""
    try:
        from liger_kernel.transformers.functional import liger_cross_entropy
    except Exception:
        return None
    return liger_cross_entropy


def host_return_check(torch, xentkit):
    """Host return time of the first and second call of each function while the stream is
    busy with a 200 ms kernel (lazy module loading may synchronize on a kernel's first call)."""
    x = torch.randn(64, 3000, device="cuda")
    y = torch.randint(0, 3000, (64,), device="cuda")
    p = torch.rand(64, 3000, device="cuda")
    calls = {
        "cross_entropy": lambda: xentkit.cross_entropy(x, y, grad=True),
        "nll_loss": lambda: xentkit.nll_loss(x, y, grad=True),
        "softmax": lambda: xentkit.softmax(x, dim=1),
        "log_softmax": lambda: xentkit.log_softmax(x, dim=1),
        "binary_cross_entropy": lambda: xentkit.binary_cross_entropy(p, p, grad=True),
        "binary_cross_entropy_with_logits":
            lambda: xentkit.binary_cross_entropy_with_logits(x, p, grad=True),
    }
    import time

    khz = getattr(torch.cuda.get_device_properties(0), "clock_rate", 0) or 2_000_000
    cycles = int(0.2 * khz * 1e3)  # about 200 ms
    out = []
    for name, fn in calls.items():
        times = []
        for _ in range(2):
            torch.cuda.synchronize()
            torch.cuda._sleep(cycles)
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        torch.cuda.synchronize()
        out.append({"function": name, "first_call_ms": times[0] * 1e3,
                    "second_call_ms": times[1] * 1e3})
    return out


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
            liger = _liger()
            t_liger = None
            if liger is not None:
                xl = x.detach().clone().requires_grad_(True)

                def liger_fwd_bwd():
                    loss = liger(xl, y)
                    (g,) = torch.autograd.grad(loss, xl)
                    return g

                try:
                    t_liger = _time(liger_fwd_bwd, repeat, torch)
                except Exception as e:  # an unsupported dtype or version
                    print(f"bench_gpu: Liger-Kernel failed: {e}", file=sys.stderr)
                del xl
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
                "torch_TBps": 2 * nbytes / t_torch / 1e12,
                "liger_ms": None if t_liger is None else t_liger * 1e3,
                "liger_TBps": None if t_liger is None else 2 * nbytes / t_liger / 1e12,
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
    p.add_argument("--classes", type=int, nargs="+", default=[128256, 32000])
    p.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"])
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--json", action="store_true")
    p.add_argument("--markdown", help="also write the tables to this file")
    a = p.parse_args(argv)
    res = run(a.rows, a.classes, a.dtypes, a.repeat)
    import torch

    import xentkit

    host = host_return_check(torch, xentkit)
    if a.json:
        print(json.dumps({"fused": res, "host_return": host}, indent=1))
        return 0

    def fmt(v, spec):
        return "n/a" if v is None else format(v, spec)

    lines = [f"device: {torch.cuda.get_device_name()}  rows={a.rows}  median of {a.repeat}", "",
             "| C | dtype | copy GB/s | xentkit ms | xentkit TB/s | % of copy | torch ms |"
             " torch TB/s | speed-up | Liger ms | Liger TB/s | loss-only ms | torch fwd ms |"
             " max grad diff |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res:
        lines.append(
            f"| {r['classes']} | {r['dtype']} | {r['copy_GBps']:.0f} | {r['xentkit_ms']:.3f} | "
            f"{r['xentkit_TBps']:.2f} | {100 * r['xentkit_fraction_of_copy']:.0f}% | "
            f"{r['torch_ms']:.3f} | {r['torch_TBps']:.2f} | {r['speedup_vs_torch']:.2f}x | "
            f"{fmt(r['liger_ms'], '.3f')} | {fmt(r['liger_TBps'], '.2f')} | "
            f"{r['xentkit_loss_only_ms']:.3f} | {r['torch_forward_ms']:.3f} | "
            f"{r['max_abs_grad_diff']:.2e} |")
    lines += ["", "host return behind a 200 ms kernel (no call may wait for it):", "",
              "| function | first call ms | second call ms |", "|---|---|---|"]
    for h in host:
        lines.append(f"| {h['function']} | {h['first_call_ms']:.3f} | "
                     f"{h['second_call_ms']:.3f} |")
    text = "\n".join(lines)
    print(text)
    if a.markdown:
        with open(a.markdown, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
