"""The names alray's Label Studio tasks and configs use, shared by export and import."""
from __future__ import annotations

ALRAY_ID = "alray_id"          # the post's id in a task's data
ALRAY_RANK = "alray_rank"
ALRAY_SCORE = "alray_score"    # the acquisition score (higher: more worth labelling)
FROM_NAME = "class"            # the Choices control
DEFAULT_OBJECT = "post"        # the object tag when the query has no pass-through column
TASKS_SUFFIX = ".label-studio.json"
CONFIG_SUFFIX = ".label-studio.xml"
# keys Label Studio's JSON-MIN/CSV exports write beside the data fields
EXPORT_KEYS = ("id", "annotator", "annotation_id", "created_at", "updated_at", "lead_time",
               "agreement")
RESERVED = {*EXPORT_KEYS, FROM_NAME, ALRAY_ID, ALRAY_RANK, ALRAY_SCORE}
