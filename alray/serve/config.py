"""``ServeConfig``: every option of the online service, all problems in one ConfigError.

The bearer token is not part of it: a config is plain data that is printed, logged and
shown by ``GET /info``, and a secret must be none of those.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from alray.acquisition.registry import ORACLE_NAMES, STRATEGY_NAMES
from alray.config import Config, PoolConfig, ScoreConfig

ID_TYPES = ("int64", "string")


@dataclass(frozen=True)
class ServeConfig(Config):
    """checkpoint: the model to start with (None: the run's latest, from state.json).
    run_dir: the loop's run directory; routed posts go to RUN/online/ and a new
    checkpoint in RUN/state.json is picked up. score: the scores returned (its
    strategies; the first one routes), with ``alray score``'s head, MC samples and
    seed. route_budget: the share of posts routed to assessors."""

    checkpoint: str | None = None
    run_dir: str | None = None
    score: ScoreConfig = field(default_factory=ScoreConfig)
    route_budget: float = 0.02
    top_classes: int = 3
    calibration_pool: str | None = None
    calibration_rows: int = 20_000
    reservoir_size: int = 20_000
    warmup_posts: int = 100          # no threshold (nothing routed) before this many scores
    host: str = "127.0.0.1"
    port: int = 8000
    app_name: str = "alray"
    replicas: int = 1
    min_replicas: int | None = None  # both set: autoscaling between them
    max_replicas: int | None = None
    target_ongoing_requests: float = 8.0
    num_cpus: float = 1.0            # per replica
    num_gpus: float = 0.0            # per replica
    max_batch_requests: int = 16     # serve.batch: requests scored in one forward pass
    batch_wait_s: float = 0.005
    max_body_mb: float = 64.0
    poll_s: float = 2.0              # how often replicas look for a new checkpoint
    flush_rows: int = 1000           # routed posts buffered before a shard is written
    flush_s: float = 5.0             # ... or after this long
    id_type: str = "int64"
    columns: PoolConfig = field(default_factory=PoolConfig)
    max_posts: int = 20_000          # posts one request may hold, however it is encoded
    max_decoded_mb: float = 256.0    # the size one request's posts may decode to
    checkpoint_root: str | None = None  # /reload loads only below it (None: RUN/checkpoints)

    _NESTED = {"columns": PoolConfig, "score": ScoreConfig}

    def _check(self) -> list[str]:
        problems = []
        if self.checkpoint is None and self.run_dir is None:
            problems.append("give a checkpoint or a run directory (its latest checkpoint)")
        unknown = [s for s in self.strategies if s not in STRATEGY_NAMES]
        if not self.strategies or unknown:
            problems.append(f"strategies {list(self.strategies)}: unknown "
                            f"{', '.join(map(repr, unknown)) or '(none given)'}; valid: "
                            f"{', '.join(s for s in STRATEGY_NAMES if s not in ORACLE_NAMES)}")
        oracles = [s for s in self.strategies if s in ORACLE_NAMES]
        if oracles:
            problems.append(f"strategies {', '.join(oracles)} need true labels; new posts "
                            "have none")
        if not 0.0 < self.route_budget < 1.0:
            problems.append(f"route_budget must be in (0, 1), got {self.route_budget!r}")
        for name in ("top_classes", "calibration_rows", "reservoir_size",
                     "replicas", "max_batch_requests", "flush_rows"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                problems.append(f"{name} must be an integer >= 1, got {getattr(self, name)!r}")
        if self.warmup_posts < 1:
            problems.append(f"warmup_posts must be >= 1, got {self.warmup_posts!r}")
        if (self.min_replicas is None) != (self.max_replicas is None):
            problems.append("autoscaling needs both min_replicas and max_replicas")
        elif self.min_replicas is not None and not 0 <= self.min_replicas <= self.max_replicas:
            problems.append(f"need 0 <= min_replicas <= max_replicas, got "
                            f"{self.min_replicas}..{self.max_replicas}")
        if self.max_replicas is not None and self.max_replicas < 1:
            problems.append("max_replicas must be >= 1")
        if not 0 < self.port < 65536:
            problems.append(f"port must be in 1..65535, got {self.port!r}")
        if self.num_cpus < 0 or self.num_gpus < 0:
            problems.append("num_cpus and num_gpus must be >= 0")
        for name in ("batch_wait_s", "max_body_mb", "poll_s", "flush_s",
                     "target_ongoing_requests"):
            if not getattr(self, name) > 0:
                problems.append(f"{name} must be > 0, got {getattr(self, name)!r}")
        if self.id_type not in ID_TYPES:
            problems.append(f"id_type must be one of {', '.join(ID_TYPES)}, got "
                            f"{self.id_type!r}")
        problems += self._check_limits()
        return problems

    def _check_limits(self) -> list[str]:
        problems = []
        if not isinstance(self.max_posts, int) or self.max_posts < 1:
            problems.append(f"max_posts must be an integer >= 1, got {self.max_posts!r}")
        if not self.max_decoded_mb > 0:
            problems.append(f"max_decoded_mb must be > 0, got {self.max_decoded_mb!r}")
        return problems

    @property
    def strategies(self) -> tuple[str, ...]:
        return self.score.strategies

    @property
    def seed(self) -> int:
        return self.score.seed

    @property
    def route_strategy(self) -> str:
        return self.strategies[0]

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 2**20)

    def autoscaling(self) -> dict | None:
        if self.min_replicas is None:
            return None
        return {"min_replicas": self.min_replicas, "max_replicas": self.max_replicas,
                "target_ongoing_requests": self.target_ongoing_requests}
