"""What the benchmarks read about processes, from Linux /proc: parents, titles, memory
and CPU time, and a background sampler. Shared by bench/score.py, bench/sweep.py and
bench/serve_load.py so that each measures processes the same way.
"""
from __future__ import annotations

import os
import threading
from typing import Callable

PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")


def _read(path: str, mode: str = "r"):
    with open(path, mode) as f:
        return f.read()


def parent(pid: int) -> int:
    try:
        return int(_read(f"/proc/{pid}/stat").rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def title(pid: int) -> str:
    """The command line as one string ('' if the process is gone); Ray workers put
    their role there (``ray::ProxyActor``, ``ray::MapWorker(...)``)."""
    try:
        return _read(f"/proc/{pid}/cmdline", "rb").replace(b"\0", b" ").decode(
            errors="replace").strip()
    except OSError:
        return ""


def pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def descends_from(pid: int, root: int) -> bool:
    seen = 0
    while pid > 1 and pid != root and seen < 64:
        pid, seen = parent(pid), seen + 1
    return pid == root


def descendants(root: int) -> set[int]:
    """``root`` and every process below it."""
    return {pid for pid in pids() if pid == root or descends_from(pid, root)}


def rss(pid: int) -> tuple[int, int] | None:
    """(VmRSS, RssAnon) in bytes; None if the process is gone."""
    try:
        fields = dict(line.split(":", 1) for line in _read(f"/proc/{pid}/status")
                      .splitlines() if ":" in line)
    except OSError:
        return None
    kib = lambda name: int(fields.get(name, "0 kB").split()[0]) * 1024  # noqa: E731
    return kib("VmRSS"), kib("RssAnon")


def cpu_seconds(pid: int, reaped: bool = False) -> float:
    """User + system CPU time of a process so far (0 if it is gone); with ``reaped``,
    plus that of its children that have exited and been waited for (Ray's short-lived
    workers end up there, in the raylet's count)."""
    try:
        fields = _read(f"/proc/{pid}/stat").rsplit(")", 1)[1].split()
        own = int(fields[11]) + int(fields[12])
        children = int(fields[13]) + int(fields[14]) if reaped else 0
        return (own + children) / TICKS
    except (OSError, IndexError, ValueError):
        return 0.0


def role(pid: int) -> str:
    """A short name for grouping: a Ray worker's role, else the program's name."""
    words = title(pid).split()
    if not words:
        return "?"
    if words[0].startswith("ray::"):
        return words[0].split("(")[0]
    return os.path.basename(words[0])


class Sampler:
    """Calls ``sample()`` every ``interval`` seconds on a thread while in the ``with``."""

    def __init__(self, sample: Callable[[], None], interval: float = 0.2):
        self.sample, self.interval = sample, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.sample()
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
