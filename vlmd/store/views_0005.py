"""The views of migration ``0005_benchmark_views``: the benchmark's side of each item and run.

- `items` gains the item's metadata and its reading (`BENCHMARK_COLUMNS`: category,
  l2_category, split, circular_group, scorer, choice, unparsed, options, hint, judged), after
  0004's serving columns;
- `model_summary` gains ``circular_accuracy``, ``circular_groups`` and ``unparsed``, as
  `vlmd.projections.summary.summarize` decides them;
- `category_summary` is new: per run, level (``category`` or ``l2_category``) and category,
  its scored items and accuracy, and for a circular run its questions and CircularEval's
  accuracy: the summary's ``by_category`` and ``by_l2_category``.

CircularEval's rule (`vlmd.projections.circular`), in SQL: a question (circular group) is
credited when each of its rotations with an outcome completed with a score of at least
`CORRECT_AT`. ``tests/test_views.py`` and ``tests/test_golden.py`` hold these to the fold.
Each statement is built from the one it replaces (0004's `items`, 0003's `model_summary`); never
edit them once shipped: freeze this module and add a migration.
"""

from __future__ import annotations

from vlmd.store import views

CORRECT_AT = views.CORRECT_AT

BENCHMARK_COLUMNS = ("category", "l2_category", "split", "circular_group", "scorer", "choice",
                     "unparsed", "options", "hint", "judged")
"""The item fields 0005 adds to `items` (answers.csv's benchmark columns among them)."""


def _swap(sql: str, old: str, new: str) -> str:
    """`sql` with its one `old` replaced by `new` (a statement that changed shape fails here,
    at import, not in a user's migration)."""
    if sql.count(old) != 1:
        raise AssertionError(f"expected {old!r} once in the statement it extends")
    return sql.replace(old, new)


_RIGHT = f"(error IS NULL AND coalesce(score >= {CORRECT_AT}, 0))"  # `circular.is_right`

# item.completed's own fields: a failure has none (whatever extra fields its body holds)
_COMPLETED_ONLY = ("choice", "unparsed", "judged")
ITEMS = _swap(views.ITEMS_0004, "    ts, seq, first_seq, attempts\n", "".join(
    f"    CASE WHEN kind = 'item.completed' THEN json_extract(body, '$.{name}') END AS {name},\n"
    if name in _COMPLETED_ONLY else f"    json_extract(body, '$.{name}') AS {name},\n"
    for name in BENCHMARK_COLUMNS) + "    ts, seq, first_seq, attempts\n")
"""0004's `items` with the `BENCHMARK_COLUMNS`."""

_MODEL_SUMMARY_0003 = views.STATEMENTS[2]
MODEL_SUMMARY = _swap(_swap(_swap(_swap(
    _MODEL_SUMMARY_0003,
    "    SELECT run, score, ", "    SELECT run, score, unparsed, "),
    "SELECT run, count(score) AS scored, avg(score) AS accuracy FROM done GROUP BY run\n)",
    f"""SELECT run, count(score) AS scored, avg(score) AS accuracy,
        sum(coalesce(unparsed, 0)) AS unparsed FROM done GROUP BY run
), questions AS (
    SELECT run, min({_RIGHT}) AS credited
    FROM items WHERE circular_group IS NOT NULL GROUP BY run, circular_group
), circular AS (
    SELECT run, count(*) AS circular_groups, avg(credited) AS circular_accuracy
    FROM questions GROUP BY run
)"""),
    "s.accuracy, pivot.", "s.accuracy, q.circular_accuracy, "
    "coalesce(q.circular_groups, 0) AS circular_groups,\n    coalesce(s.unparsed, 0) AS unparsed, "
    "pivot."),
    "LEFT JOIN pivot USING (run)", "LEFT JOIN pivot USING (run)\n"
    "    LEFT JOIN circular AS q USING (run)")
"""0003's `model_summary` with CircularEval's accuracy, its questions and the unparsed answers."""

CATEGORY_SUMMARY = f"""CREATE VIEW category_summary AS
WITH levels AS (
    SELECT run, 'category' AS level, category AS name, error, score, circular_group
    FROM items WHERE category IS NOT NULL
    UNION ALL
    SELECT run, 'l2_category', l2_category, error, score, circular_group
    FROM items WHERE l2_category IS NOT NULL
), circular_runs AS (
    SELECT DISTINCT run FROM items WHERE circular_group IS NOT NULL
), questions AS (
    SELECT run, level, name, min({_RIGHT}) AS credited
    FROM levels WHERE circular_group IS NOT NULL GROUP BY run, level, name, circular_group
), circular AS (
    SELECT run, level, name, count(*) AS circular_groups, avg(credited) AS circular_accuracy
    FROM questions GROUP BY run, level, name
), plain AS (
    SELECT run, level, name, count(CASE WHEN error IS NULL THEN score END) AS items,
        avg(CASE WHEN error IS NULL THEN score END) AS accuracy
    FROM levels GROUP BY run, level, name
)
SELECT p.run, p.level, p.name AS category, p.items, p.accuracy,
    CASE WHEN p.run IN (SELECT run FROM circular_runs)
         THEN coalesce(c.circular_groups, 0) END AS circular_groups,
    c.circular_accuracy
FROM plain AS p LEFT JOIN circular AS c USING (run, level, name)
ORDER BY p.run, p.level, p.name"""

STATEMENTS: tuple[str, ...] = ("DROP VIEW model_summary", "DROP VIEW items", ITEMS,
                               MODEL_SUMMARY, CATEGORY_SUMMARY)
"""Migration 0005's steps, in dependency order."""
