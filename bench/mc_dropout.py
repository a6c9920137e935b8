"""Benchmark: shared-trunk MC dropout vs K naive dropout passes, training and fine-tuning.

At the study's dims (image 1024, text 300, default widths, 50 classes), on random data:
- BALD-style statistics with K samples: ``MCDropout`` (trunk once, fixed folded masks)
  vs K plain forward passes with ``nn.Dropout`` on (the naive way), same process and
  threads; rows/s of each, their ratio, and one deterministic pass;
- this CPU's dense fp32 matmul GFLOP/s and the model's FLOPs per row, so each path's
  share of peak is printed;
- ``fit`` on the passive set and ``fine_tune`` (one epoch) on two labelled-set sizes.

    .venv/bin/python bench/mc_dropout.py --rows 20000 --k 20 --threads 2

Prints markdown table rows for docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

from alray.config import ModelConfig, TrainConfig
from alray.model import FusionNet, MCDropout
from alray.pool.arrays import PostArrays
from alray.train import fine_tune, fit


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=20000, help="rows scored per method")
    p.add_argument("--k", type=int, default=20, help="MC samples")
    p.add_argument("--batch", type=int, default=4096, help="rows per scoring batch")
    p.add_argument("--chunk-rows", type=int, default=512, help="MCDropout chunk size")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--missing", type=float, default=0.0, help="share of rows missing a modality")
    p.add_argument("--fit-rows", type=int, default=2000)
    p.add_argument("--fit-epochs", type=int, default=45)
    p.add_argument("--fine-tune-rows", type=int, nargs="*", default=[2000, 100000])
    p.add_argument("--matmul-size", type=int, default=4096)
    p.add_argument("--skip-train", action="store_true")
    return p.parse_args()


def random_data(config: ModelConfig, n: int, missing: float, seed: int) -> PostArrays:
    """Random embeddings; ``missing`` of the rows lack one modality (chosen at random)."""
    rng = np.random.default_rng(seed)
    mods = config.modalities
    absent = rng.integers(0, len(mods), n)
    drop = (rng.random(n) < missing) & (len(mods) > 1)
    feats, pres = {}, {}
    for i, m in enumerate(mods):
        pres[m] = ~(drop & (absent == i))
        x = rng.standard_normal((n, config.modality_dims[m]), dtype=np.float32)
        x[~pres[m]] = 0.0
        feats[m] = x
    labels = rng.integers(0, config.n_classes, n)
    return PostArrays(ids=np.arange(n), features=feats, present=pres, labels=labels)


def matmul_gflops(size: int, repeat: int = 5) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)  # warm-up
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * size ** 3 / best / 1e9


def linear_flops(config: ModelConfig) -> dict[str, float]:
    """Multiply-add FLOPs per row: first Linears, the rest, heads (2 per MAC)."""
    first = rest = 0
    for m in config.modalities:
        dims = (config.modality_dims[m], *config.branch_widths[m])
        first += dims[0] * dims[1]
        rest += sum(a * b for a, b in zip(dims[1:-1], dims[2:]))
    fused = (sum(w[-1] for w in config.branch_widths.values()), *config.fused_widths)
    rest += sum(a * b for a, b in zip(fused[:-1], fused[1:])) + fused[-1] * config.n_classes
    heads = sum(w[-1] * config.n_classes for w in config.branch_widths.values()) \
        if config.heads == "multi" else 0
    return {"first": 2.0 * first, "rest": 2.0 * rest, "heads": 2.0 * heads}


def batches(data: PostArrays, size: int):
    for start in range(0, len(data), size):
        rows = slice(start, start + size)
        yield ({m: torch.from_numpy(f[rows]) for m, f in data.features.items()},
               {m: torch.from_numpy(p[rows]) for m, p in data.present.items()})


def run_fast(model, data, k, batch, chunk_rows) -> float:
    scorer = MCDropout(model, k, seed=0)
    t0 = time.perf_counter()
    for feats, pres in batches(data, batch):
        scorer.statistics(feats, pres, "fused", ("mean_probs", "mean_entropy"), chunk_rows)
    return len(data) / (time.perf_counter() - t0)


def run_naive(model, data, k, batch) -> float:
    """K forward passes with nn.Dropout drawing per-element masks, BN in eval."""
    model.eval()
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.train()
    t0 = time.perf_counter()
    with torch.inference_mode():
        for feats, pres in batches(data, batch):
            mean, ent = 0.0, 0.0
            for _ in range(k):
                logp = torch.log_softmax(model(feats, pres).logits["fused"], dim=1)
                mean = mean + logp.exp() / k
                ent = ent - (logp.exp() * logp).sum(1) / k
    model.eval()
    return len(data) / (time.perf_counter() - t0)


def run_deterministic(model, data, batch) -> float:
    model.eval()
    t0 = time.perf_counter()
    with torch.inference_mode():
        for feats, pres in batches(data, batch):
            torch.softmax(model(feats, pres).logits["fused"], dim=1)
    return len(data) / (time.perf_counter() - t0)


def bench_scoring(args, config: ModelConfig, model: FusionNet) -> None:
    data = random_data(config, args.rows, args.missing, seed=1)
    warm = data.take(np.arange(min(len(data), args.batch)))
    run_fast(model, warm, args.k, args.batch, args.chunk_rows)
    run_naive(model, warm, 2, args.batch)
    fast = run_fast(model, data, args.k, args.batch, args.chunk_rows)
    naive = run_naive(model, data, args.k, args.batch)
    single = run_deterministic(model, data, args.batch)
    peak = matmul_gflops(args.matmul_size)
    f = linear_flops(config)
    fast_flops = f["first"] + args.k * f["rest"]  # fused head only
    naive_flops = args.k * (f["first"] + f["rest"] + f["heads"])
    one_flops = f["first"] + f["rest"] + f["heads"]
    print(f"| MC dropout K={args.k}, fused statistics | rows/s | FLOPs/row | % of "
          f"{peak:.0f} GFLOP/s |\n|---|---|---|---|")
    for name, rate, flops in (("shared trunk (MCDropout)", fast, fast_flops),
                              ("naive: K forward passes", naive, naive_flops),
                              ("one deterministic pass", single, one_flops)):
        print(f"| {name} | {rate:,.0f} | {flops / 1e6:.1f} M | "
              f"{100 * rate * flops / (peak * 1e9):.0f}% |")
    print(f"\nspeed-up shared trunk vs naive: **{fast / naive:.2f}x** ({args.rows} rows, "
          f"batch {args.batch}, {args.missing:.0%} of rows missing a modality; FLOPs "
          f"assume every modality present)")


def bench_training(args, config: ModelConfig) -> None:
    train = TrainConfig(epochs=args.fit_epochs)
    model = FusionNet(config)
    t0 = time.perf_counter()
    fit(model, random_data(config, args.fit_rows, args.missing, seed=2), train)
    print(f"\n| training | seconds |\n|---|---|\n| fit {args.fit_rows} rows x "
          f"{args.fit_epochs} epochs | {time.perf_counter() - t0:.1f} |")
    for n in args.fine_tune_rows:
        data = random_data(config, n, args.missing, seed=3)
        t0 = time.perf_counter()
        fine_tune(model, data, train, step_seed=1)
        print(f"| fine_tune 1 epoch, {n} labelled rows | {time.perf_counter() - t0:.2f} |")


def main() -> None:
    args = parse()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    config = ModelConfig()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = FusionNet(config).eval()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}\n")
    bench_scoring(args, config, model)
    if not args.skip_train:
        bench_training(args, config)


if __name__ == "__main__":
    main()
