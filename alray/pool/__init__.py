"""Pools: the contract, reading and writing, validation, ids, generators, layouts.

Nothing is imported here, so the constant below costs nothing to import (the numpy-only
``alray.acquisition`` uses it).
"""

UNLABELLED = -1  # the label of a post nobody labelled yet (a null in the pool)
