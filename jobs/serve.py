"""Ray job: the online scoring service; the options are ``alray serve``'s.

    ray job submit --working-dir . -- python jobs/serve.py \
        --run-dir /shared/runs/live --host 0.0.0.0 --port 8000 --token-file /shared/token

The job runs until it is stopped (``ray job stop ID``: SIGTERM, a clean shutdown).
"""
import sys

from alray.cli import main

if __name__ == "__main__":
    main(["serve", *sys.argv[1:]])
