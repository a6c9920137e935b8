"""The in-process scoring path of another checkout against this one, same pool and model.

    git worktree add /tmp/base e30bb3a          # or any older commit
    OMP_NUM_THREADS=2 .venv/bin/python bench/before_after.py --before /tmp/base \\
        --pool data/demo/pool --checkpoint data/demo/passive.ckpt --repeat 2

Runs alternate (before, after, before, ...), each in a fresh process, so both see the
same machine; it prints each run's seconds and the first query ids, which must agree.
Checkouts before the restructure of issue #15 take ``use_ray=False``; later ones a
``ComputeConfig``.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

CHILD = """
import sys, time
sys.path.insert(0, {root!r})
import torch
torch.set_num_threads(2)
from alray.config import ScoreConfig
from alray.scoring.pipeline import score_pool
score = ScoreConfig(strategies=({strategy!r},))
try:
    from alray.config import ComputeConfig
    kwargs = {{"compute": ComputeConfig(local=True)}}
except ImportError:
    kwargs = {{"use_ray": False}}
if "batch_size" in ScoreConfig.__dataclass_fields__:
    kwargs = {{"use_ray": False}}
started = time.perf_counter()
query = score_pool({pool!r}, {checkpoint!r}, score, **kwargs)[{strategy!r}]
print(f"{{time.perf_counter() - started:.2f}}", query.column("id").to_pylist()[:5])
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="another checkout's root")
    parser.add_argument("--pool", required=True)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--strategy", default="margin")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for i in range(args.repeat):
        for name, root in (("before", os.path.abspath(args.before)), ("after", here)):
            code = CHILD.format(root=root, strategy=args.strategy,
                                pool=os.path.abspath(args.pool),
                                checkpoint=os.path.abspath(args.checkpoint))
            out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                                 text=True, check=True).stdout.strip()
            print(f"run {i + 1} {name}: {out}")


if __name__ == "__main__":
    main()
