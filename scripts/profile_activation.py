#!/usr/bin/env python
"""A/B of formulations of ALIKED's activation (SELU, which torch runs as `aten::elu_`) on a
32x752x1024 tensor, channels-last and contiguous, interleaved in one process.

    python scripts/profile_activation.py [--repeats 5]

Prints the best time of each and whether it is bit-identical to torch.selu. Result on the
2-core Xeon (under load): the stock in-place torch.selu_ is the fastest (29 ms) and the only
exact one; torch.where(x > 0, x, alpha * expm1(x)) takes 291 ms, relu + expm1(min(x, 0))
210 ms, F.elu then a multiply 77 ms; so the model's SELU modules are left as they are.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

SCALE, ALPHA = 1.0507009873554804934193349852946, 1.6732632423543772848170429916717


def selu_inplace(x):
    return torch.selu_(x)


def selu(x):
    return torch.selu(x)


def where_expm1(x):
    return torch.where(x > 0, x, torch.expm1(x).mul_(ALPHA)).mul_(SCALE)


def relu_expm1(x):
    return torch.relu(x).add_(torch.expm1(torch.clamp(x, max=0)), alpha=ALPHA).mul_(SCALE)


def elu_then_scale(x):
    return torch.nn.functional.elu(x, ALPHA).mul_(SCALE)


def relu_reference(x):
    return torch.relu(x)


VARIANTS = [selu_inplace, selu, where_expm1, relu_expm1, elu_then_scale, relu_reference]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    base = torch.randn(1, 32, 752, 1024)
    for layout, x in (
        ("channels-last", base.contiguous(memory_format=torch.channels_last)),
        ("contiguous", base.contiguous()),
    ):
        best = {f.__name__: float("inf") for f in VARIANTS}
        for _ in range(args.repeats):
            for f in VARIANTS:
                y = x.clone()
                t = time.perf_counter()
                f(y)
                best[f.__name__] = min(best[f.__name__], time.perf_counter() - t)
        ref = torch.selu(x)
        for f in VARIANTS:
            exact = "" if f is relu_reference else f"  exact={torch.equal(f(x.clone()), ref)}"
            print(f"{layout:>13} {f.__name__:>15} {1000 * best[f.__name__]:7.1f} ms{exact}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
