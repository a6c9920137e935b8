"""Label Studio: a query as tasks to label, and Label Studio's exports back as answers.

Export (``write_label_studio``): one task per queried post. Its ``data`` holds the post's
id (``alray_id``; Label Studio keeps its own task ``id``, and its JSON-MIN and CSV
exports write that ``id`` over a data field of the same name), the rank and acquisition
score (sortable in the data manager) and the query's pass-through columns (url, title,
...). The model's answer is a ``predictions`` entry, shown to the assessor as a
pre-annotation: the top class, with the class probability as the prediction's score.
Beside the tasks, the labelling config: one single-choice ``Choices`` named ``class``
whose choices show the class names (a ``--class-names`` file, one name a line, or the
numbers) and carry the class index as their ``alias``. Label Studio writes the alias
into every annotation and export, so answers come back as class indices whatever the
names are (renaming a class in the project's config cannot shift the labels).

Import (``read_answers``): Label Studio's three table-like exports, told apart by
content: JSON (tasks with an ``annotations`` list), JSON-MIN (one record per annotation)
and CSV (one row per annotation, with ``annotation_id`` and ``alray_id`` columns). Both
JSON-MIN and CSV drop skipped annotations; JSON marks them ``was_cancelled``. Per task:

- skipped (cancelled) annotations and annotations without a class do not vote; a task
  with no vote is skipped (alray records it as ``skipped``, like a post left out of a CSV);
- one or more votes: the majority class wins; a tie between the most voted classes is
  refused and listed with its Label Studio task id and alray id, and nothing is imported.

The result is one (id, label) row per answered task, in file order, which
``alray.loop.assessors`` checks exactly as it checks a CSV (unknown ids, ids of earlier
queries, labels out of range, duplicates and conflicts between tasks of the same post).
Choices are read as class indices; with ``class_names`` a choice equal to a name maps
to its index (a project whose config was written by hand with names and no aliases).
"""
from alray.loop.labelstudio.answers import is_export, read_answers
from alray.loop.labelstudio.fields import ALRAY_ID, CONFIG_SUFFIX, FROM_NAME, TASKS_SUFFIX
from alray.loop.labelstudio.tasks import (label_config, pass_through_columns, query_tasks,
                                          read_class_names, write_label_studio,
                                          write_run_query)

__all__ = ["ALRAY_ID", "CONFIG_SUFFIX", "FROM_NAME", "TASKS_SUFFIX", "is_export",
           "label_config", "pass_through_columns", "query_tasks", "read_answers",
           "read_class_names", "write_label_studio", "write_run_query"]
