"""Item images for the dashboard: looked up in the run's dataset, as the agent read it.

This is the one place vlmd reads datasets; it uses the agent's own reader
(`vlmd_agent.evaluate.datasets`) so both sides agree on what an item's images are: JSONL, TSV,
parquet and arrow files, folders of them, with the run's ``--columns``. An item may have
several images (MMMU); the first is served unless another is asked for.
Loaded datasets are cached by path, columns and the files' modification times and sizes.
"""

from __future__ import annotations

import functools
from pathlib import Path

from vlmd_agent.evaluate import datasets

CACHED_DATASETS = 4
Images = dict[str, tuple[tuple[bytes, str], ...]]


class ImageNotFound(LookupError):
    """The run's dataset, the item or its image is not there (any more); the message says
    which."""


@functools.lru_cache(maxsize=CACHED_DATASETS)
def _images(path: str, columns: str | None, stamp: tuple[tuple[int, int], ...]) -> Images:
    data = datasets.load(path, columns=datasets.parse_columns(columns))
    return {item.id: item.images for item in data.items}


def item_image(dataset: str | None, item: str, n: int = 0,
               columns: str | None = None) -> tuple[bytes, str]:
    """The `n`-th image (from 0) of `item` in `dataset`, read with `columns` (the run's
    ``--columns``), and its MIME type; raises ImageNotFound."""
    if not dataset:
        raise ImageNotFound("the run names no dataset")
    try:
        files = datasets.source_files(dataset)
        stamp = tuple((s.st_mtime_ns, s.st_size) for s in (Path(f).stat() for f in files))
        images = _images(dataset, columns, stamp)
    except OSError as e:
        raise ImageNotFound(f"dataset {dataset} cannot be read: {e.strerror}") from None
    except (datasets.DatasetError, ValueError) as e:
        raise ImageNotFound(f"dataset {dataset} is no longer valid: {e}") from None
    try:
        found = images[item]
    except KeyError:
        raise ImageNotFound(f"no item {item[:200]!r} in {dataset}") from None
    if not 0 <= n < len(found):
        raise ImageNotFound(f"item {item[:200]!r} has {len(found)} image(s), not {n + 1}")
    return found[n]
