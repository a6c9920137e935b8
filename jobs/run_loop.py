"""Ray job: run an active-learning loop, or resume it; the options are ``alray loop``'s.

Ray Jobs run once; resubmitting the same command is the retry, and it resumes the run
directory where the last attempt stopped (a run that finished just reports its curve)::

    ray job submit --working-dir . -- python jobs/run_loop.py \
        --pool /data/pool --val /data/val --run-dir /shared/runs/margin-0 \
        --strategy margin --steps 100 --seed 0
"""
import sys

from alray.cli import main

if __name__ == "__main__":
    main(["loop", "--resume-if-exists", *sys.argv[1:]])
