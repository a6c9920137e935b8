"""The active-learning loop: run directories, the round, assessors' labels."""
from alray.loop.assessors import import_labels
from alray.loop.run import Outcome, run_loop
from alray.loop.setup import new_run, reopen_run, shape_model
from alray.loop.state import RunDir, RunState

__all__ = ["Outcome", "RunDir", "RunState", "import_labels", "new_run", "reopen_run",
           "run_loop", "shape_model"]
