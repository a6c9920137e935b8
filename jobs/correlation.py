"""Ray job: the correlation experiment (tables 1-2); the options are ``alray correlation``'s.

    ray job submit --working-dir . -- python jobs/correlation.py \
        --config jobs/configs/correlation.yaml --out /shared/correlation
"""
import sys

from alray.cli import main

if __name__ == "__main__":
    main(["correlation", *sys.argv[1:]])
