"""Ray job: generate a study-like pool; the options are ``alray generate``'s.

    ray job submit --working-dir . -- python jobs/generate_pool.py \
        /shared/pools/study4m --rows 4000000 --val-rows 20000 --seed 0

The pool goes to OUT/pool and the validation set to OUT/val. The job's driver writes
them on the head node, so on a cluster give OUT on a file system every node mounts at
the same path (docs/cluster.md). OUT is written as a directory renamed into place,
which object stores such as s3:// cannot do: write locally, then copy the folder up.
"""
import sys

from alray.cli import main

if __name__ == "__main__":
    main(["generate", *sys.argv[1:]])
