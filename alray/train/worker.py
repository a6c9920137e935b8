"""One training request, answered in plain torch: the body of every training worker.

A request carries everything (model config, weights, optimizer state, data), so the
worker is stateless: the same request gives bitwise the same reply on CPU, and a worker
that died can be replaced by one that simply takes the request again. ``run_request`` is
what ``LocalTraining`` calls in-process and what each Ray Train worker calls in its serve
loop (``alray.train.service``).

Request (plain data)::

    {"op": "fit" | "fine_tune", "model": ModelConfig.to_dict(), "train": TrainConfig.to_dict(),
     "weights": None | state_dict, "train_state": None | Trainer.state_dict(),
     "data": PostArrays (labelled rows), "step_seed": int (fine_tune)}

Reply: ``{"weights", "train_state"}`` (CPU tensors), ``"history"`` (one record per epoch,
as ``fit``/``fine_tune`` return), ``"seconds"`` (compute time here), ``"pid"``,
``"workers"`` (world size).

``serve`` is the serve loop each Ray Train worker runs around ``run_request``, and
``Mailbox`` the async actor it takes requests from; Ray is imported inside them only, so
importing this module never imports Ray.
"""
from __future__ import annotations

import asyncio
import copy
import os
import time
import warnings
from typing import Any, Mapping

import torch

from alray.config import ModelConfig, TrainConfig
from alray.model.fusion import FusionNet
from alray.pool.arrays import PostArrays
from alray.seeds import derive_seed
from alray.train import core
from alray.train.core import Trainer

OPS = ("fit", "fine_tune")


def new_request(op: str, model: ModelConfig, train: TrainConfig, data: PostArrays,
                weights: Mapping | None = None, train_state: Mapping | None = None,
                step_seed: int = 0) -> dict[str, Any]:
    """A request in the contract's plain-data form (``weights=None``: a new model)."""
    return {"op": op, "model": model.to_dict(), "train": train.to_dict(),
            "weights": weights, "train_state": train_state, "data": data,
            "step_seed": int(step_seed)}


def run_request(request: Mapping[str, Any], device: str | torch.device = "cpu",
                parallel: "DataParallel | None" = None, progress=None) -> dict[str, Any]:
    """Build the model and Trainer the request describes, run ``fit`` or ``fine_tune``
    on ``device``, return the new state as CPU tensors (see the module docstring).

    ``parallel``: this process's rank in a data-parallel group (each rank gets the same
    request and trains on its slice of every batch); ``None`` is a single process.
    ``progress(epoch, epochs, loss)`` after each epoch.
    The request is never modified.
    """
    started = time.perf_counter()
    op = request["op"]
    if op not in OPS:
        raise ValueError(f"unknown training op {op!r}; expected one of {OPS}")
    model_cfg = ModelConfig.from_dict(request["model"])
    train = TrainConfig.from_dict(request["train"])
    data: PostArrays = request["data"]
    trainer = _build_trainer(model_cfg, train, request, torch.device(device))
    if parallel is not None:
        parallel.check(core.epoch_batches(len(data), train.batch_size, train.adaptive_batch))
    # fit/fine_tune's own choice of epochs, seed and BatchNorm mode, with the parallel hook
    if op == "fit":
        epochs, seed, freeze = train.epochs, train.seed, False
    else:
        epochs, seed, freeze = train.fine_tune_epochs, request["step_seed"], train.freeze_batchnorm
    trainer = core.as_trainer(trainer, train)
    history = core.run_epochs(trainer, data, train, epochs, seed, freeze, progress, parallel,
                              freeze_first=op == "fine_tune" and train.freeze_first_block)
    return {"weights": _to_cpu(trainer.model.state_dict()),
            "train_state": _to_cpu(trainer.state_dict()),
            "history": history, "seconds": time.perf_counter() - started,
            "pid": os.getpid(), "workers": 1 if parallel is None else parallel.world}


def warm_up() -> None:
    """Pay one-off costs before the first request: the first optimizer a process builds
    imports ``torch._dynamo`` (1.1 s here, 20x a small fine-tune step)."""
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])


def _build_trainer(model_cfg: ModelConfig, train: TrainConfig, request: Mapping,
                   device: torch.device) -> Trainer:
    with torch.random.fork_rng(devices=[]):  # seeded init, caller's RNG untouched
        torch.manual_seed(derive_seed(train.seed, "init"))
        model = FusionNet(model_cfg)
    if request["weights"] is not None:
        model.load_state_dict(request["weights"])
    model.to(device)
    state = request["train_state"]
    # Optimizer.load_state_dict keeps the given tensors (same device and dtype) and Adam
    # then updates them in place: copy, or the caller's request would change under it
    state = copy.deepcopy(state) if state is not None else None
    return Trainer.create(model, train, state=state)


def _to_cpu(value):
    """The same nested structure with every tensor on the CPU (detached)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return type(value)((k, _to_cpu(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    return value


class DataParallel:
    """This process's share of a data-parallel step (``torch.distributed`` already set up).

    Every rank sees the same shuffled order; each trains on its contiguous slice of every
    batch; gradients are averaged weighted by slice size (so the step approximates the
    full batch) with one ``all_reduce`` over a flat buffer. Parameters start equal (same
    request) and stay equal: same averaged gradient, same Adam state. BatchNorm statistics
    are per rank (as DDP without SyncBatchNorm); rank 0's are returned.
    """

    def __init__(self, rank: int, world: int):
        self.rank, self.world = rank, world

    def check(self, sizes: list[int]) -> None:
        """Each rank's slice needs 2 rows: BatchNorm cannot train on one."""
        if min(sizes) < 2 * self.world:
            raise ValueError(f"a batch of {min(sizes)} rows cannot be split over "
                             f"{self.world} workers (2 rows each at least); use fewer "
                             f"workers or a larger batch")

    def shard(self, idx: torch.Tensor) -> torch.Tensor:
        """``(batch,)`` row positions -> this rank's contiguous slice."""
        return idx.tensor_split(self.world)[self.rank]

    def average_gradients(self, params: list[torch.Tensor], rows: int, batch: int) -> None:
        """grad <- sum over ranks of (rows_r / batch) * grad_r, for every param; one
        ``all_reduce`` of a flat buffer whose tail counts the ranks that had a gradient
        (a param no rank touched keeps ``grad=None``, as Adam expects)."""
        import torch.distributed as dist

        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flags = torch.tensor([float(p.grad is not None) for p in params],
                             dtype=grads[0].dtype, device=grads[0].device)
        flat = torch.cat([g.reshape(-1) * (rows / batch) for g in grads] + [flags])
        dist.all_reduce(flat)
        had = flat[-len(params):].tolist()
        offset = 0
        for p, g, n_had in zip(params, grads, had):
            p.grad = flat[offset:offset + g.numel()].view_as(p) if n_had > 0 else None
            offset += g.numel()

    def sum_metrics(self, sums: dict, counts: dict) -> None:
        """Epoch sums and row counts -> totals over every rank (in place)."""
        import torch.distributed as dist

        keys = sorted(sums)
        packed = torch.tensor([float(sums[k]) for k in keys] + [float(counts[k]) for k in keys],
                              dtype=torch.float64)
        if dist.get_backend() == "nccl":
            packed = packed.cuda()
        dist.all_reduce(packed)
        packed = packed.cpu()
        for i, k in enumerate(keys):
            sums[k], counts[k] = packed[i], int(packed[len(keys) + i])


# --- the Ray side of a worker (Ray imported inside) ------------------------------------

def serve(loop: dict) -> None:
    """Ray Train's per-worker function: answer requests from ``loop["mailbox"]`` (a
    ``Mailbox`` actor) until its stop message; rank 0 posts the replies. ``loop``:
    ``{"mailbox", "threads" (None: the node's cores / its workers), "use_gpu"}``."""
    import ray
    import ray.train

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    local = max(1, context.get_local_world_size())
    torch.set_num_threads(loop["threads"] or max(1, len(os.sched_getaffinity(0)) // local))
    device = torch.device("cpu")
    if loop["use_gpu"]:
        import ray.train.torch
        device = ray.train.torch.get_device()
    parallel = DataParallel(rank, world) if world > 1 else None
    # requests arrive as read-only views of the object store; training only reads them
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
    warm_up()
    mailbox = loop["mailbox"]
    ray.get(mailbox.register.remote(rank, os.getpid()))
    while True:
        seq, box = ray.get(mailbox.take.remote(rank))
        if box is None:
            return
        try:
            request = ray.get(box[0])
            # a caller may ray.put big values (data it sends again) and pass their refs
            request = {k: ray.get(v) if isinstance(v, ray.ObjectRef) else v
                       for k, v in request.items()}
            reply = run_request(request, device, parallel)
        except Exception as exc:  # the request's fault: answer it, keep serving
            reply = {"error": exc}
        if rank == 0:
            ray.get(mailbox.answer.remote(seq, [_put(ray, reply)]))


def _put(ray, reply: dict):
    try:
        return ray.put(reply)
    except Exception as exc:  # an exception that does not pickle
        return ray.put({"error": RuntimeError(f"{type(reply.get('error')).__name__}: "
                                              f"{reply.get('error')} ({exc})")})


class Mailbox:
    """Async actor: requests fan out to every rank; rank 0's reply waits for the driver.

    ``seq=None`` in ``post`` is the stop message. Waiting calls hold no thread.
    """

    def __init__(self, world: int):
        self.queues = [asyncio.Queue() for _ in range(world)]
        self.replies: dict[int, asyncio.Future] = {}
        self.pids: dict[int, int] = {}
        self.all_ready = asyncio.Event()
        self.controller_box: list | None = None
        self.world = world

    async def post(self, seq: int | None, box: list | None) -> None:
        for queue in self.queues:
            queue.put_nowait((seq, box))

    async def take(self, rank: int) -> tuple:
        return await self.queues[rank].get()

    async def answer(self, seq: int, box: list) -> None:
        self._future(seq).set_result(box)

    async def reply(self, seq: int) -> list:
        try:
            return await self._future(seq)
        finally:
            self.replies.pop(seq, None)

    async def register(self, rank: int, pid: int) -> None:
        self.pids[rank] = pid
        if len(self.pids) == self.world:
            self.all_ready.set()

    async def set_controller(self, box: list) -> None:
        self.controller_box = box

    async def controller(self) -> list | None:
        return self.controller_box

    async def ready(self) -> list[int]:
        """Worker pids by rank, once every rank serves."""
        await self.all_ready.wait()
        return [self.pids[r] for r in range(self.world)]

    def _future(self, seq: int) -> asyncio.Future:
        if seq not in self.replies:
            self.replies[seq] = asyncio.get_running_loop().create_future()
        return self.replies[seq]
