"""Ray job: the report of a finished sweep; the options are ``alray report``'s.

    ray job submit --working-dir . -- python jobs/report.py /shared/sweeps/x --out report
"""
import sys

from alray.cli import main

if __name__ == "__main__":
    main(["report", *sys.argv[1:]])
