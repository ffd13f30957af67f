"""Hub-format datasets, read locally: a parquet file, a folder of parquet shards (or a glob of
them), or a ``datasets.save_to_disk`` folder (arrow files named by its ``state.json``).

Nothing is downloaded: images come from the files themselves (the hub's ``{"bytes", "path"}``
image cells, raw bytes, base64 or data: URLs) or from paths relative to the dataset's folder.
Each file's columns pick a `schemas.Schema`; its rows become raw fields for `datasets`, and
errors name the file and the row (counted from 1): ``test-00000-of-00002.parquet:7: image: ...``.
pyarrow is imported only here, when such a dataset is read.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from vlmd_agent.evaluate import schemas
from vlmd_agent.evaluate.readers import LETTERS, DatasetError, Where, b64, choices, image_ref

SUFFIXES = (".parquet", ".arrow")
BATCH_ROWS = 256
Rows = Iterator[tuple[Where, dict[str, Any]]]


def is_hub(path: Path) -> bool:
    """Whether `path` names a hub-format dataset (by its form; `files` checks the contents)."""
    return path.suffix.lower() in SUFFIXES or path.is_dir() or glob.has_magic(str(path))


def files(path: Path) -> list[Path]:
    """The data files of a hub-format dataset, in order; DatasetError when there are none."""
    text = str(path)
    if glob.has_magic(text):
        found = sorted(Path(p) for p in glob.glob(text, recursive=True)
                       if Path(p).suffix.lower() in SUFFIXES and Path(p).is_file())
        if not found:
            raise DatasetError(path, None, None, "the pattern matches no .parquet or .arrow file")
        return found
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DatasetError(path, None, None, "no such file or folder")
    if (path / "dataset_dict.json").is_file():
        splits = sorted(p.name for p in path.iterdir() if (p / "state.json").is_file())
        raise DatasetError(path, None, None, "a datasets DatasetDict: name one split's folder "
                           f"({', '.join(splits) or 'none found'})")
    if (path / "state.json").is_file():
        return _saved(path)
    for suffix in SUFFIXES:
        if found := sorted(path.glob(f"*{suffix}")):
            return found
    deeper = sorted({p.parent.name for p in path.glob("*/*.parquet")})
    hint = (f"; its subfolders have some ({', '.join(deeper[:5])}): name one, or a pattern "
            f"such as {path}/*/test-*.parquet" if deeper else "")
    raise DatasetError(path, None, None, f"no .parquet or .arrow files in this folder{hint}")


def _saved(folder: Path) -> list[Path]:
    """The arrow files a ``save_to_disk`` folder's state.json lists."""
    try:
        state = json.loads((folder / "state.json").read_text())
        names = [entry["filename"] for entry in state["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DatasetError(folder / "state.json", None, None,
                           f"not a datasets state file ({type(e).__name__}: {e})") from None
    return [folder / name for name in names]


def read(path: Path, columns: Mapping[str, str]) -> Rows:
    """Every row of every file of the dataset at `path` as raw fields (see `readers`);
    `columns` is the parsed ``--columns`` (field -> column, and ``schema``)."""
    base = path.parent if path.is_file() or glob.has_magic(str(path)) else path
    position = 0
    for file in files(path):
        names, batches = _open(file)
        renames = {k: v for k, v in columns.items() if k != "schema"}
        renamed = [*names, *(k for k, v in renames.items() if _has(names, v))]
        schema = schemas.detect(renamed, columns.get("schema"))
        if schema is None:
            raise DatasetError(file, None, None, _unknown(names, columns.get("schema")))
        number = 0
        for batch in batches:
            for row in batch.to_pylist():
                number += 1
                where = Where(file, number)
                yield where, _fields(schema, _renamed(row, renames), where, position, base)
                position += 1


def _open(file: Path) -> tuple[list[str], Iterator[Any]]:
    """A file's column names and its record batches."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ModuleNotFoundError:
        raise DatasetError(file, None, None, "reading parquet and arrow files needs pyarrow "
                           "(pip install pyarrow; scripts/setup.sh installs it)") from None
    try:
        if file.suffix.lower() == ".parquet":
            reader = pq.ParquetFile(file)
            return list(reader.schema_arrow.names), reader.iter_batches(batch_size=BATCH_ROWS)
        source = pa.memory_map(str(file))
        try:  # datasets writes the streaming format; the file format is arrow's other one
            stream = pa.ipc.open_stream(source)
        except pa.ArrowInvalid:
            stream = pa.ipc.open_file(source)
            return list(stream.schema.names), (stream.get_batch(i)
                                               for i in range(stream.num_record_batches))
        return list(stream.schema.names), iter(stream)
    except FileNotFoundError:
        raise DatasetError(file, None, None, "no such file") from None
    except (OSError, pa.ArrowException) as e:
        kind = "parquet" if file.suffix.lower() == ".parquet" else "arrow"
        raise DatasetError(file, None, None, f"not a readable {kind} file: {e}") from None


def _has(names: list[str], column: str) -> bool:
    return all(part in names for part in column.split("+"))


def _renamed(row: dict[str, Any], renames: Mapping[str, str]) -> dict[str, Any]:
    for name, column in renames.items():
        parts = column.split("+")
        row[name] = [row.get(p) for p in parts] if len(parts) > 1 else row.get(column)
    return row


def _unknown(names: list[str], forced: str | None) -> str:
    shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
    wanted = f"the {forced} schema's columns" if forced else (
        f"no known schema ({', '.join(schemas.NAMES)})")
    return (f"columns {shown} do not match {wanted}: name them with --columns, e.g. "
            "id=qid,question=query,answer=label,image=img")


def _fields(schema: schemas.Schema, row: Mapping[str, Any], where: Where, position: int,
            base: Path) -> dict[str, Any]:
    def pick(name: str) -> Any:
        return next((row[c] for c in schema.fields.get(name, ()) if row.get(c) is not None),
                    None)

    fields: dict[str, Any] = {name: pick(name) for name in (
        "question", "answer", "hint", "category", "l2_category", "split", "scorer")}
    ident = pick("id")
    fields["id"] = position if ident is None else ident
    fields["images"] = [image for c in schema.fields.get("images", ())
                        if row.get(c) is not None for image in _images(where, row[c], base)]
    raw = pick("choices")
    fields["choices"] = choices(where, raw) if raw is not None else choices(where, {
        k: v for k, v in row.items() if len(k) == 1 and k in LETTERS and v is not None
        and not (isinstance(v, float) and v != v)})
    if schema.answer_index:
        fields["answer"] = _lettered(where, fields["answer"], len(fields["choices"]))
    fields["scorer"] = fields["scorer"] or schema.scorer
    fields["family"] = schema.family
    if schema.adapt is not None:
        schema.adapt(fields, row)
    return {k: v for k, v in fields.items() if v is not None}


def _lettered(where: Where, answer: Any, options: int) -> str:
    """An option's position (0 = A; an int or its text) as its letter."""
    text = str(answer).strip()
    if isinstance(answer, bool) or not text.isdigit() or int(text) >= min(options, len(LETTERS)):
        where.fail("answer", f"{answer!r} is not the index of one of the {options} options")
    return LETTERS[int(text)]


def _images(where: Where, cell: Any, base: Path) -> list[bytes]:
    """The images of one cell: bytes, ``{"bytes", "path"}``, text (a data: URL, a path relative
    to the dataset's folder, or base64), or a list of them."""
    if isinstance(cell, list):
        return [image for one in cell if one is not None for image in _images(where, one, base)]
    if isinstance(cell, bytes | bytearray):
        return [bytes(cell)]
    if isinstance(cell, dict):
        if cell.get("bytes"):
            return [bytes(cell["bytes"])]
        if cell.get("path"):
            return [image_ref(where, os.fspath(cell["path"]), base)]
        where.fail("image", "an image cell with neither bytes nor a path")
    if isinstance(cell, str):
        if cell.startswith("data:") or _is_file(base, cell):
            return [image_ref(where, cell, base)]
        return [b64(where, cell)]
    where.fail("image", f"expected image bytes, a path or base64, got {type(cell).__name__}")


def _is_file(base: Path, name: str) -> bool:
    """Whether `name` is a file under `base` (base64 text is no file name: too long, or not)."""
    try:
        return len(name) <= 4096 and (base / name).is_file()
    except (OSError, ValueError):
        return False
