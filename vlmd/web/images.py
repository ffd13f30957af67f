"""Item images for the dashboard: looked up in the run's dataset, as the agent read it.

This is the one place vlmd reads datasets; it uses the agent's own reader
(`vlmd_agent.evaluate.datasets`) so both sides agree on what an item's images are: every format
it reads (JSONL, TSV, parquet and arrow files, folders of them), with the run's ``--columns``.
An item may have several images (MMMU); the first is served unless another is asked for.

Each dataset is read once (per version: its files' modification times and sizes, and the
columns) into an `ImageIndex`: its images, written one after another into a file of a private
folder, and for each item id where its images are in that file. Serving an image is then one
read of its bytes, whatever the dataset's format or size and whatever the id holds (``/``
included), and an index costs memory only for its offsets. `ImageIndexes` keeps the most
recently used indexes (`KEEP`) and deletes the files of those it drops.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from vlmd_agent.evaluate import datasets

KEEP = 32
Key = tuple[str, str | None, tuple[tuple[int, int], ...]]


class ImageNotFound(LookupError):
    """The run's dataset, the item or its image is not there (any more); the message says
    which."""


@dataclass(frozen=True)
class ImageIndex:
    """A dataset's images in one file: item id -> ((offset, length, MIME type), ...)."""

    dataset: str
    blob: Path
    places: dict[str, tuple[tuple[int, int, str], ...]]

    def read(self, item: str, n: int = 0) -> tuple[bytes, str]:
        """The `n`-th image of `item` and its MIME type; ImageNotFound if there is none."""
        found = self.places.get(item)
        if found is None:
            raise ImageNotFound(f"no item {item[:200]!r} in {self.dataset}")
        if not 0 <= n < len(found):
            raise ImageNotFound(f"item {item[:200]!r} has {len(found)} image(s), not {n + 1}")
        offset, length, mime = found[n]
        with self.blob.open("rb") as f:
            f.seek(offset)
            return f.read(length), mime


def build(dataset: str, columns: str | None, blob: Path) -> ImageIndex:
    """Read `dataset` (with `columns`) once and write its images to `blob`."""
    data = datasets.load(dataset, columns=datasets.parse_columns(columns))
    places: dict[str, tuple[tuple[int, int, str], ...]] = {}
    with blob.open("wb") as f:
        for item in data.items:
            spots = []
            for image, mime in item.images:
                spots.append((f.tell(), len(image), mime))
                f.write(image)
            places[item.id] = tuple(spots)
    return ImageIndex(dataset, blob, places)


class ImageIndexes:
    """The indexes of the datasets runs name, built on first use (in a worker thread: the
    methods block) and kept in a private folder, removed with this object (or at exit)."""

    def __init__(self, keep: int = KEEP) -> None:
        self.keep = keep
        self._folder = Path(tempfile.mkdtemp(prefix="vlmd-images-"))  # mode 0700
        weakref.finalize(self, shutil.rmtree, self._folder, ignore_errors=True)
        self._lock = threading.Lock()
        self._building: dict[Key, threading.Lock] = {}
        self._indexes: OrderedDict[Key, ImageIndex] = OrderedDict()
        self._names = itertools.count()

    def item_image(self, dataset: str | None, item: str, n: int = 0,
                   columns: str | None = None) -> tuple[bytes, str]:
        """The `n`-th image (from 0) of `item` in `dataset`, read with `columns` (the run's
        ``--columns``), and its MIME type; raises ImageNotFound."""
        if not dataset:
            raise ImageNotFound("the run names no dataset")
        try:
            files = datasets.source_files(dataset)
            key = (dataset, columns,
                   tuple((s.st_mtime_ns, s.st_size) for s in (Path(f).stat() for f in files)))
            index = self._index(key)
        except OSError as e:
            raise ImageNotFound(f"dataset {dataset} cannot be read: {e.strerror}") from None
        except (datasets.DatasetError, ValueError) as e:
            raise ImageNotFound(f"dataset {dataset} is no longer valid: {e}") from None
        return index.read(item, n)

    def _index(self, key: Key) -> ImageIndex:
        with self._lock:
            if (index := self._indexes.get(key)) is not None:
                self._indexes.move_to_end(key)
                return index
            building = self._building.setdefault(key, threading.Lock())
        with building:  # one build per dataset version, however many ask at once
            with self._lock:
                if (index := self._indexes.get(key)) is not None:
                    return index
            blob = self._folder / f"{next(self._names)}.images"
            try:
                index = build(key[0], key[1], blob)
            except BaseException:
                blob.unlink(missing_ok=True)
                raise
            finally:
                with self._lock:
                    self._building.pop(key, None)
            with self._lock:
                self._indexes[key] = index
                while len(self._indexes) > self.keep:
                    _, dropped = self._indexes.popitem(last=False)
                    dropped.blob.unlink(missing_ok=True)
            return index
