"""Ray job: a strategy x seed sweep on Ray Tune; the options are ``alray sweep``'s.

    ray job submit --working-dir . -- python jobs/sweep.py \
        --config jobs/configs/uncertainty.yaml --out /shared/sweeps/uncertainty

A resubmitted job resumes the sweep in --out (finished trials are kept).
"""
import os
import sys

from alray.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    out = args[args.index("--out") + 1] if "--out" in args else None
    resume = out is not None and os.path.exists(os.path.join(out, "sweep.json"))
    main(["sweep", *(["--resume"] if resume else []), *args])
