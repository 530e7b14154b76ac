"""The first layers over the observation, dense (today's four width-H layers) against one
gather-sum over the observation's non-zero cells (``torch.nn.functional.embedding_bag``): how
much of a PPO minibatch step a sparse first layer would save. Prints microseconds per forward +
backward and the ratio, both timed in this run, and the largest difference of the outputs.

    python benchmarks/first_layer_sparse.py            # ~10 s, one thread

The observation is four binary planes of an n x n grid (agent, ghost, diamond, oversight), so a
5x5 grid has 100 inputs of which about 5 are non-zero; the experts, the value net and the gate
each start with a dense layer over all 100.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=1024, help="minibatch (512 envs x 32 / 16)")
    ap.add_argument("--inputs", type=int, default=100, help="4 planes x 5 x 5")
    ap.add_argument("--nonzeros", type=int, default=5)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=4, help="experts x 2, value, gate")
    ap.add_argument("--repeats", type=int, default=300)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    n, c, h, k = args.batch, args.inputs, args.hidden, args.layers
    idx = torch.stack([torch.randperm(c, generator=gen)[: args.nonzeros] for _ in range(n)])
    x = torch.zeros(n, c).scatter_(1, idx, 1.0)
    weights = [torch.randn(h, c, generator=gen).requires_grad_() for _ in range(k)]
    biases = [torch.zeros(h).requires_grad_() for _ in range(k)]
    table = torch.cat([w.detach() for w in weights]).t().contiguous().requires_grad_()
    bias = torch.zeros(k * h).requires_grad_()
    grads = torch.randn(n, k * h, generator=gen)

    def dense() -> None:
        for j, (w, b) in enumerate(zip(weights, biases)):
            F.linear(x, w, b).backward(grads[:, j * h:(j + 1) * h])

    def sparse() -> None:
        (F.embedding_bag(idx, table, mode="sum") + bias).backward(grads)

    times = {}
    for name, fn in (("dense", dense), ("sparse", sparse)):
        for _ in range(20):
            fn()
        t0 = time.perf_counter()
        for _ in range(args.repeats):
            fn()
        times[name] = (time.perf_counter() - t0) / args.repeats * 1e6
    with torch.no_grad():
        ref = torch.cat([F.linear(x, w, b) for w, b in zip(weights, biases)], dim=1)
        diff = (ref - (F.embedding_bag(idx, table, mode="sum") + bias)).abs().max().item()
    print(f"{k} first layers {c} -> {h} on {n} observations with {args.nonzeros} non-zeros, "
          f"{args.threads} thread(s):")
    print(f"  dense  {times['dense']:7.0f} us per forward + backward")
    print(f"  sparse {times['sparse']:7.0f} us per forward + backward "
          f"({times['dense'] / times['sparse']:.1f}x faster)")
    print(f"  largest output difference {diff:.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
