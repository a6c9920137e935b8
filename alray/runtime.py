"""Connecting to Ray, once, at the entry point: the embedded local Ray by default, a
cluster when an address is given.

``connect`` is called by the CLI, the jobs and anyone using the library from Python;
library functions that need Ray only ``require_ray`` (a clear error instead of Ray
silently starting or joining something). ``RAY_ADDRESS`` (how ``ray job submit`` hands a
job its cluster) is honoured by ``connect``; without it and without an address the
embedded Ray is always a new one of this process.

Where Ray's own logs go is decided here too. With ``log_file``, nothing of Ray reaches
the terminal: its Python loggers (``ray``, ``ray.data``, ...: the token-authentication
warning, "Started a local Ray instance", Ray Data's notices) write to that file, so does
everything native code writes to this process's stderr (the driver's C++ core worker:
``E ... core_worker.cc`` lines), workers' output is not forwarded (``log_to_driver``
off), Ray Data draws no progress bars of its own, and Ray's Python warnings are logged
there rather than shown. ``sys.stderr`` stays the terminal, so the caller's own messages,
progress bars, warnings and tracebacks still show. Without ``log_file`` Ray keeps its
defaults (``--verbose``).
"""
from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

from alray.errors import AlrayError

_ray_log: Path | None = None  # the file Ray's logs go to in this process, once routed
_LOG_FORMAT = "%(asctime)s\t%(levelname)s %(name)s %(filename)s:%(lineno)s -- %(message)s"


def connect(address: str | None = None, log_to_driver: bool = False,
            log_file: str | os.PathLike | None = None) -> None:
    """Start (or join) Ray once per process; a no-op when Ray is already up.

    ``log_file``: send Ray's logs there instead of the terminal (module docstring); the
    file is appended to and its folder created. None: Ray's defaults, with workers'
    output forwarded when ``log_to_driver``."""
    import ray

    if ray.is_initialized():
        return
    if log_file is not None:
        route_ray_logs(log_file)
        log_to_driver = False
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address, ignore_reinit_error=True, log_to_driver=log_to_driver)
    else:
        # "local": a plain ray.init() would join whatever cluster `ray start` last left
        # on this machine (Ray records it in its temp dir); the embedded default is ours
        ray.init(address="local", include_dashboard=False, ignore_reinit_error=True,
                 log_to_driver=log_to_driver)
    if _ray_log is not None:
        _note(f"Ray session: {_session_dir()} (workers' logs in its logs/ folder)")


def ray_log() -> Path | None:
    """The file Ray's logs go to in this process (``connect(log_file=...)``), or None."""
    return _ray_log


def route_ray_logs(log_file: str | os.PathLike) -> Path:
    """Send Ray's logs in this process to ``log_file`` (module docstring); idempotent,
    and called again it also routes loggers a Ray library configured since (Ray Serve
    adds its own console handler when imported). Returns the file's path."""
    global _ray_log
    import ray.data  # noqa: F401  (configures the "ray.data" logger when imported)

    path = Path(log_file).resolve()
    if _ray_log is None:
        path.parent.mkdir(parents=True, exist_ok=True)
        stream = open(path, "a", buffering=1, encoding="utf-8", errors="backslashreplace")
        _redirect_native_stderr(stream)
        _ray_log = path
        _note(f"alray {' '.join(sys.argv[1:]) or '(library)'}: Ray's logs follow "
              f"(pid {os.getpid()})")
        import warnings
        _show = warnings.showwarning

        def showwarning(message, category, filename, lineno, file=None, line=None):
            if _is_ray_file(filename):  # Ray's deprecation notices: to the log
                logging.getLogger("ray").warning(
                    warnings.formatwarning(message, category, filename, lineno, line).strip())
            else:
                _show(message, category, filename, lineno, file, line)
        warnings.showwarning = showwarning
    _route_loggers(_ray_log)
    ray.data.DataContext.get_current().enable_progress_bars = False
    # Ray Tune's default console output prints its experiment table and results path
    # even at verbose=0; its classic reporter prints nothing at verbose=0
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    return _ray_log


def _redirect_native_stderr(stream) -> None:
    """File descriptor 2 (what native code writes to) becomes ``stream``'s file;
    ``sys.stderr`` moves to a copy of the old descriptor, so Python's own writes still
    reach the terminal."""
    sys.stderr.flush()
    terminal = os.dup(2)
    os.dup2(stream.fileno(), 2)
    sys.stderr = os.fdopen(terminal, "w", buffering=1,
                           encoding=getattr(sys.stderr, "encoding", None) or "utf-8",
                           errors="backslashreplace")


def _route_loggers(path: Path) -> None:
    """Every ``ray*`` logger's console handlers replaced by one file handler."""
    handler = next((h for h in logging.getLogger("ray").handlers
                    if getattr(h, "_alray", False)), None)
    if handler is None:
        handler = logging.FileHandler(path, encoding="utf-8")
        handler.setFormatter(logging.Formatter(_LOG_FORMAT))
        handler.setLevel(logging.INFO)  # Ray Data's DEBUG lines stay in its session log
        handler._alray = True
    names = ["ray", *(name for name in logging.Logger.manager.loggerDict
                      if name.startswith("ray."))]
    for name in names:
        logger = logging.getLogger(name)
        consoles = [h for h in logger.handlers if _is_console(h)]
        for console in consoles:
            logger.removeHandler(console)
        if name == "ray" or (consoles and not logger.propagate):
            if handler not in logger.handlers:
                logger.addHandler(handler)


def _is_console(handler: logging.Handler) -> bool:
    """A handler that writes to the terminal (Ray's all do, through a StreamHandler)."""
    return (isinstance(handler, logging.StreamHandler)
            and not isinstance(handler, logging.FileHandler)
            and not getattr(handler, "_alray", False))


def _is_ray_file(filename: str) -> bool:
    import ray
    return str(filename).startswith(os.path.dirname(ray.__file__) + os.sep)


def _note(line: str) -> None:
    if _ray_log is not None:
        with open(_ray_log, "a", encoding="utf-8") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')}\talray -- {line}\n")


def _session_dir() -> str:
    try:
        import ray
        return ray._private.worker._global_node.get_session_dir_path()
    except Exception:  # a remote cluster's driver has no local node
        return "(on the cluster)"


def require_ray() -> None:
    """AlrayError unless this process is connected to Ray."""
    import ray

    if not ray.is_initialized():
        raise AlrayError("Ray is not connected: call alray.runtime.connect() (or "
                         "ray.init()) first, or run in this process (local=True)")


__all__ = ["connect", "ray_log", "require_ray", "route_ray_logs"]
