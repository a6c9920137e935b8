"""Ray job: score a pool and write the query; the options are ``alray score``'s.

    ray job submit --working-dir . -- python jobs/score_pool.py \
        --pool data/pool --checkpoint ckpt --strategy margin,bald --out query.parquet
"""
import sys

from alray.cli import main

if __name__ == "__main__":
    main(["score", *sys.argv[1:]])
