"""Item images for the dashboard: looked up in the run's dataset file, as the agent read it.

This is the one place vlmd reads datasets; it uses the agent's own reader
(`vlmd_agent.evaluate.datasets`, standard library only) so both sides agree on what an item's
image is.
Loaded datasets are cached by path and modification time.
"""

from __future__ import annotations

import functools
from pathlib import Path

from vlmd_agent.evaluate import datasets

CACHED_DATASETS = 4


class ImageNotFound(LookupError):
    """The run's dataset or the item is not there (any more); the message says which."""


@functools.lru_cache(maxsize=CACHED_DATASETS)
def _images(path: str, mtime_ns: int) -> dict[str, tuple[bytes, str]]:
    data = datasets.load(path)
    return {item.id: (item.image, item.image_mime) for item in data.items}


def item_image(dataset: str | None, item: str) -> tuple[bytes, str]:
    """The encoded image of `item` in `dataset` and its MIME type; raises ImageNotFound."""
    if not dataset:
        raise ImageNotFound("the run names no dataset")
    path = Path(dataset)
    try:
        images = _images(str(path), path.stat().st_mtime_ns)
    except OSError as e:
        raise ImageNotFound(f"dataset {dataset} cannot be read: {e.strerror}") from None
    except datasets.DatasetError as e:
        raise ImageNotFound(f"dataset {dataset} is no longer valid: {e}") from None
    try:
        return images[item]
    except KeyError:
        raise ImageNotFound(f"no item {item[:200]!r} in {dataset}") from None
