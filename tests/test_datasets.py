"""Dataset readers: good JSONL and VLMEvalKit TSV files load; bad ones name the line and field."""

from __future__ import annotations

import base64
import csv
import json
import pickle
from pathlib import Path
from typing import Any

import pytest

from vlmd_agent.evaluate.datasets import DatasetError, Item, load, shard

PNG_B64 = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElF"
           "TkSuQmCC")
PNG = base64.b64decode(PNG_B64)
GIF_B64 = "R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7"
GIF = base64.b64decode(GIF_B64)
WEBP = (b"RIFF\x1a\x00\x00\x00WEBPVP8L\x0d\x00\x00\x00/\x00\x00\x00\x10\x07\x10\x11\x11"
        b"\x88\x88\xfe\x07\x00")
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(20)
BMP = b"BM" + bytes(60)
TSV_HEADER = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image"]


def write_jsonl(directory: Path, *rows: dict[str, Any], name: str = "data.jsonl") -> Path:
    (directory / "img").mkdir(exist_ok=True)
    (directory / "img" / "cat.png").write_bytes(PNG)
    path = directory / name
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def write_tsv(directory: Path, *rows: list[str], header: list[str] = TSV_HEADER) -> Path:
    path = directory / "bench.tsv"
    with path.open("w", newline="") as file:
        csv.writer(file, delimiter="\t", lineterminator="\n").writerows([header, *rows])
    return path


def row(**fields: Any) -> dict[str, Any]:
    return {"id": "1", "image": "img/cat.png", "question": "What animal?", "answer": "cat",
            **fields}


def test_jsonl_loads_every_kind_of_item(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path,
        row(hint="Look closely.", category="animals"),
        row(id=2, image="data:image/gif;base64," + GIF_B64, answer=["cat", "kitten", "cat"]),
        row(id="3", question="Colour?", choices=["red", "blue"], answer="b"),
        row(id="4", question="Colour?", choices={"a": "red", "c": "green", "B": None},
            answer="C"),
        row(id="5", question="Colour?", A="red", B="blue", C="", answer="A"),
        row(id="6", answer=["invoice"], scorer="anls"),
    )
    dataset = load(path)
    assert (dataset.name, dataset.path, len(dataset)) == ("data", path, 6)
    assert dataset.items[0] == Item(
        id="1", question="What animal?", image=PNG, image_mime="image/png", answer="cat",
        choices={}, hint="Look closely.", category="animals", scorer="exact")
    assert [(i.id, i.image_mime, i.answer, i.choices, i.scorer) for i in dataset.items[1:]] == [
        ("2", "image/gif", ("cat", "kitten", "cat"), {}, "vqa"),
        ("3", "image/png", "B", {"A": "red", "B": "blue"}, "mcq"),
        ("4", "image/png", "C", {"A": "red", "C": "green"}, "mcq"),
        ("5", "image/png", "A", {"A": "red", "B": "blue"}, "mcq"),
        ("6", "image/png", ("invoice",), {}, "anls"),
    ]


def test_blank_lines_are_skipped_and_lines_are_counted(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text("\n" + json.dumps(row(image="data:image/png;base64," + PNG_B64)) + "\n\n"
                    + json.dumps(row(id="2", image="missing.png")) + "\n")
    with pytest.raises(DatasetError, match=r"data\.jsonl:4: image: no such file"):
        load(path)


@pytest.mark.parametrize(("image", "mime"), [
    (PNG, "image/png"), (JPEG, "image/jpeg"), (GIF, "image/gif"), (WEBP, "image/webp"),
    (BMP, "image/bmp"),
])
def test_image_formats_are_recognised_by_their_magic_bytes(tmp_path: Path, image: bytes,
                                                           mime: str) -> None:
    (tmp_path / "picture").write_bytes(image)
    path = write_jsonl(tmp_path, row(image="picture"))
    assert load(path).items[0].image_mime == mime


def test_prompts(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path,
        row(question="What colour is it?", hint="It is a fruit.", choices=["red", "blue"],
            answer="A"),
        row(id="2", question="What animal is this?"),
    )
    mcq, short = load(path).items
    # lmms-eval's MMBench prompt, and its short-answer one
    assert mcq.prompt() == ("It is a fruit. What colour is it? There are several options:\n"
                            "A. red\nB. blue\n\n"
                            "Answer with the option's letter from the given choices directly.")
    assert short.prompt() == ("What animal is this?\n"
                              "Answer the question using a single word or phrase.")
    assert mcq.prompt("scienceqa") == ("Context: It is a fruit.\nWhat colour is it?\nA. red\n"
                                       "B. blue\nAnswer with the option's letter from the given "
                                       "choices directly.")
    assert short.prompt("Q: {question} [{hint}]") == "Q: What animal is this? []"
    assert mcq.prompt("{hint}\n{question}") == "It is a fruit.\nWhat colour is it?"
    assert short.prompt("{hint}\n{question}") == "What animal is this?"


def test_scorer_argument_overrides_every_item(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path, row(), row(id="2", answer=["a", "b"], scorer="vqa"))
    assert {item.scorer for item in load(path, scorer="anls").items} == {"anls"}


def test_unknown_scorer_argument_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown scorer 'bleu'"):
        load(write_jsonl(tmp_path, row()), scorer="bleu")


def test_vlmevalkit_tsv_loads(tmp_path: Path) -> None:
    big = base64.b64encode(PNG + bytes(300_000)).decode()  # beyond csv's default cell limit
    path = write_tsv(
        tmp_path,
        ["0", "What colour?", "nan", "red", "blue", "green", "", "C", "colour", PNG_B64],
        ["1", "How many?\nCount them.", "", "1", "2", "3", "4", "d", "count", big],
        ["2", "What colour, again?", "Hint.", "red", "blue", "NaN", "nan", "A", "", "0"],
        ["3", "Which animal?", "", "", "", "", "", "['cat', 'kitten']", "", GIF_B64],
    )
    items = load(path).items
    assert [(i.id, i.question, i.hint, i.choices, i.answer, i.category, i.scorer, i.image_mime)
            for i in items] == [
        ("0", "What colour?", None, {"A": "red", "B": "blue", "C": "green"}, "C", "colour",
         "mcq", "image/png"),
        ("1", "How many?\nCount them.", None, {"A": "1", "B": "2", "C": "3", "D": "4"}, "D",
         "count", "mcq", "image/png"),
        ("2", "What colour, again?", "Hint.", {"A": "red", "B": "blue"}, "A", None, "mcq",
         "image/png"),
        ("3", "Which animal?", None, {}, ("cat", "kitten"), None, "vqa", "image/gif"),
    ]
    assert items[1].image == PNG + bytes(300_000)
    assert items[2].image == PNG  # a short image cell is the index of the row holding it


def test_tsv_with_more_options_and_no_hint_or_category_columns(tmp_path: Path) -> None:
    header = ["index", "image", "question", "A", "B", "C", "D", "E", "F", "answer"]
    path = write_tsv(tmp_path, ["7", PNG_B64, "Pick F.", *"uvwxyz", "F"], header=header)
    (item,) = load(path).items
    assert (item.choices["F"], item.answer, item.hint, item.category) == ("z", "F", None, None)


JSONL_ERRORS = [
    (row(id="1"), '{"id": "2",', "2: bad JSON at column 12: Expecting property name enclosed "
     "in double quotes"),
    (row(id="1"), "[", "2: bad JSON at column 2: Expecting value; expected one JSON object per "
     "line"),
    (row(id="1"), '["a list"]', "2: expected a JSON object, got an array: write JSON Lines, "
     "one object per line"),
    (row(id="1"), "{}", "2: id: missing field"),
    (row(id="1"), row(id="2", question=None), "2: question: empty"),
    (row(id="1"), {k: v for k, v in row(id="2").items() if k != "answer"},
     "2: answer: missing field"),
    (row(id="1"), {k: v for k, v in row(id="2").items() if k != "image"},
     "2: image: missing field"),
    (row(id="1"), row(id=1), "2: id: duplicate id '1' (first on line 1)"),
    (row(id="1"), row(id="2", image="img/7.png"),
     "2: image: no such file 'img/7.png' (relative to {path})"),
    (row(id="1"), row(id="2", image="data:image/png;base64,not base64!"),
     "2: image: not valid base64"),
    (row(id="1"), row(id="2", image="https://example.com/cat.png"),
     "2: image: remote URLs are not supported: 'https://example.com/cat.png'"),
    (row(id="1"), row(id="2", image="data:text/plain,hello"),
     "2: image: not a PNG, JPEG, GIF, WEBP or BMP image"),
    (row(id="1"), row(id="2", question="   "), "2: question: empty"),
    (row(id="1"), row(id="2", answer=[]),
     "2: answer: expected a non-empty list of non-empty answers"),
    (row(id="1"), row(id="2", choices=["red", "blue"], answer="C"),
     "2: answer: 'C' is not one of the options' letters A, B"),
    (row(id="1"), row(id="2", choices=["red", "blue"], answer="red"),
     "2: answer: 'red' is not one of the options' letters A, B"),
    (row(id="1"), row(id="2", choices=["red"], A="red"),
     "2: choices: given both 'choices' and option fields A"),
    (row(id="1"), row(id="2", choices={"1": "red"}),
     "2: choices: option key '1' is not a letter A-Z"),
    (row(id="1"), row(id="2", scorer="mcq"), "2: choices: an mcq item needs options"),
    (row(id="1"), row(id="2", scorer="bleu"),
     "2: scorer: unknown scorer 'bleu'; expected one of mcq, exact, vqa, anls, relaxed"),
    (row(id="1"), row(id="2", hint=["x"]), "2: hint: expected text, got list"),
    (row(id="1"), row(id="2", answer=["cat"], scorer="vqa"),
     "2: answer: VQA accuracy counts the humans who agree with the model: give two or more "
     "answers (a list), or use the exact scorer"),
    (row(id="1"), row(id=""), "2: id: must be 1 to 256 characters"),
]


@pytest.mark.parametrize(("first", "second", "message"), JSONL_ERRORS)
def test_bad_jsonl_names_the_line_and_field(tmp_path: Path, first: dict[str, Any],
                                            second: dict[str, Any] | str, message: str) -> None:
    path = write_jsonl(tmp_path, first)
    with path.open("a") as file:
        file.write((second if isinstance(second, str) else json.dumps(second)) + "\n")
    with pytest.raises(DatasetError) as error:
        load(path)
    assert str(error.value) == f"{path}:{message.format(path=path)}"


GOOD = ["1", "What colour?", "", "red", "blue", "", "", "A", "colour", PNG_B64]
TSV_ERRORS = [
    (TSV_HEADER[:-1], [GOOD[:-1]], "1: image: missing column"),
    (TSV_HEADER, [GOOD, ["2", *GOOD[1:-1], "not*base64"]], "3: image: not valid base64"),
    (TSV_HEADER, [GOOD, ["2", *GOOD[1:-1], "aGVsbG8gd29ybGQ="]],
     "3: image: not a PNG, JPEG, GIF, WEBP or BMP image"),
    (TSV_HEADER, [GOOD, GOOD], "3: id: duplicate id '1' (first on line 2)"),
    (TSV_HEADER, [GOOD, ["2", *GOOD[1:7], "C", *GOOD[8:]]],
     "3: answer: 'C' is not one of the options' letters A, B"),
    (TSV_HEADER, [GOOD, GOOD[:5]], "3: expected 10 cells (tab-separated), found 5"),
    (TSV_HEADER, [["2", "Multi\nline", *GOOD[2:]], ["3", "", *GOOD[2:]]],
     "4: question: empty"),
]


@pytest.mark.parametrize(("header", "rows", "message"), TSV_ERRORS)
def test_bad_tsv_names_the_line_and_field(tmp_path: Path, header: list[str],
                                          rows: list[list[str]], message: str) -> None:
    path = write_tsv(tmp_path, *rows, header=header)
    with pytest.raises(DatasetError) as error:
        load(path)
    assert str(error.value) == f"{path}:{message}"
    assert error.value.line == int(message.split(":")[0])


@pytest.mark.parametrize(("name", "content", "message"), [
    ("data.csv", "id,question\n", "unknown format '.csv': expected .jsonl or .json (JSON Lines), "
     ".tsv (VLMEvalKit), .parquet, .arrow, or a folder of them"),
    ("data", "", "unknown format '(no extension)': expected .jsonl or .json (JSON Lines), .tsv "
     "(VLMEvalKit), .parquet, .arrow, or a folder of them"),
    ("empty.jsonl", "\n\n", "no items"),
    ("empty.tsv", "", "no items"),
])
def test_unusable_files_are_refused(tmp_path: Path, name: str, content: str,
                                    message: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DatasetError) as error:
        load(path)
    assert str(error.value) == f"{path}: {message}"


def test_dataset_errors_survive_pickling(tmp_path: Path) -> None:
    error = DatasetError(tmp_path / "data.jsonl", 7, "image", "not valid base64")
    copy = pickle.loads(pickle.dumps(error))
    assert (str(copy), copy.line, copy.field) == (str(error), 7, "image")


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"nope\.jsonl: no such file"):
        load(tmp_path / "nope.jsonl")


def test_non_utf8_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_bytes(b'{"id": "\xff"}\n')
    with pytest.raises(DatasetError, match=r"data\.jsonl: not UTF-8 text \(byte 8\)"):
        load(path)


def test_shard_is_round_robin_and_covers_every_item(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path, *(row(id=str(i)) for i in range(7)))
    items = load(path).items
    shards = [shard(items, index, 3) for index in range(3)]
    assert [[item.id for item in part] for part in shards] == [
        ["0", "3", "6"], ["1", "4"], ["2", "5"]]
    assert sorted(item.id for part in shards for item in part) == sorted(i.id for i in items)
    assert shard(items, 0, 1) == items


@pytest.mark.parametrize(("index", "count"), [(3, 3), (-1, 3), (0, 0)])
def test_shard_rejects_an_index_outside_the_count(index: int, count: int) -> None:
    with pytest.raises(ValueError, match=rf"shard {index}/{count}: need 0 <= index < count"):
        shard((), index, count)
