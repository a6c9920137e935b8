"""The online scoring service (``alray serve``): new posts scored as they arrive.

Modules, from the request to the run directory:

- ``config``: ``ServeConfig``, every option of the service, checked at once.
- ``posts``: HTTP bodies (JSON, Arrow IPC, Parquet) -> one checked table of posts;
  ``bodies``: Arrow IPC and Parquet bodies sized from their own metadata before they
  are decoded, then validated in full.
- ``model``: ``OnlineModel``, the checkpoint's scores for a table of posts, computed as
  ``BatchScorer`` (``alray score``) computes them.
- ``routing``: the streaming threshold, the routed-posts writer and the ``Coordinator``
  actor that all replicas share.
- ``app``: the Ray Serve deployment and ``serve_forever``.
- ``queue``: routed posts -> the run's next open query, for ``alray labels import``.

Importing this package imports neither Ray nor torch.
"""
