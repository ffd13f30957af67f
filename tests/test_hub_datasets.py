"""Hub-format datasets read locally: tiny parquet and arrow files in each benchmark's schema,
built here with pyarrow, load as items; bad ones name the file, the row and the field."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.test_datasets import GIF, PNG, write_jsonl, write_tsv
from vlmd_agent.evaluate.datasets import DatasetError, load, source_files
from vlmd_agent.evaluate.schemas import parse_columns

IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def image(data: bytes | None = PNG, path: str | None = None) -> dict[str, Any]:
    return {"bytes": data, "path": path}


def write_parquet(path: Path, rows: list[dict[str, Any]],
                  types: dict[str, pa.DataType] | None = None) -> Path:
    """A parquet file with the hub's image struct for every image column."""
    names = list(rows[0])
    fields = [pa.field(n, (types or {}).get(n) or (IMAGE if re.fullmatch(r"image(_\d)?", n)
                                                    else None)
                       or pa.infer_type([r[n] for r in rows])) for n in names]
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=pa.schema(fields)), path)
    return path


MMBENCH = [
    {"index": 0, "question": "What colour is the ball?", "hint": "A toy.", "A": "red",
     "B": "blue", "C": "green", "D": None, "answer": "B", "category": "attribute",
     "L2-category": "perception", "split": "dev", "source": "x", "image": image()},
    {"index": 1, "question": "How many balls?", "hint": None, "A": "1", "B": "2", "C": None,
     "D": None, "answer": "A", "category": "counting", "L2-category": "perception",
     "split": "dev", "source": "x", "image": image(GIF)},
]


_MMMU = {"explanation": "", "img_type": "['Photos']", "topic_difficulty": "Easy",
         "subfield": "Biology"}
SAMPLES: dict[str, list[dict[str, Any]]] = {
    "mmbench": MMBENCH,
    "mmmu": [
        {"id": "validation_Biology_1", "question": "Compare <image 1> and <image 2>.",
         "options": "['the first', 'the second', 'neither']", "answer": "B",
         "image_1": image(), "image_2": image(GIF), "image_3": None,
         "question_type": "multiple-choice", **_MMMU},
        {"id": "validation_Biology_2", "question": "How many cells in <image 1>?",
         "options": "[]", "answer": "4", "image_1": image(), "image_2": None, "image_3": None,
         "question_type": "open", **_MMMU}],
    "scienceqa": [
        {"image": image(), "question": "Which is a mammal?", "choices": ["frog", "whale"],
         "answer": 1, "hint": "", "task": "closed choice", "grade": "grade4",
         "subject": "natural science", "topic": "biology", "category": "Classification",
         "skill": "x", "lecture": "", "solution": ""}],
    "ai2d": [
        {"question": "Which stage comes first?", "options": ["egg", "larva", "adult"],
         "answer": "0", "image": image()}],
    "chartqa": [
        {"type": "human_test", "question": "What is the peak?", "answer": "45",
         "image": image()}],
    "docvqa": [
        {"questionId": 337, "question": "What is the date?", "question_types": ["handwritten"],
         "image": image(), "docId": 279, "ucsf_document_id": "x", "ucsf_document_page_no": "1",
         "answers": ["1/8/93", "1/8/1993"], "data_split": "val"}],
    "infovqa": [
        {"questionId": 98, "question": "Which country?", "answers": ["Peru"],
         "answer_type": ["single span"], "image": image(), "image_url": "", "ocr": "",
         "data_split": "val"}],
    "textvqa": [
        {"image_id": "a", "question_id": 5, "question": "What brand?", "question_tokens": [],
         "image": image(), "answers": ["nokia"] * 8 + ["Nokia"] * 2, "image_classes": [],
         "ocr_tokens": ["nokia"], "set_name": "val"}],
}
"""A few rows in each built-in schema, as the hub's files hold them."""


def test_mmbench_parquet_keeps_hint_options_categories_and_split(tmp_path: Path) -> None:
    data = load(write_parquet(tmp_path / "mmbench.parquet", MMBENCH))
    first, second = data.items
    assert (data.name, first.id, first.answer, first.scorer, first.family) == (
        "mmbench", "0", "B", "mcq", "mmbench")
    assert first.choices == {"A": "red", "B": "blue", "C": "green"}
    assert (first.hint, first.category, first.l2_category, first.split) == (
        "A toy.", "attribute", "perception", "dev")
    assert (second.image, second.image_mime, second.hint, second.choices) == (
        GIF, "image/gif", None, {"A": "1", "B": "2"})
    assert first.circular_group is None
    assert first.prompt() == ("A toy. What colour is the ball? There are several options:\n"
                              "A. red\nB. blue\nC. green\n\n"
                              "Answer with the option's letter from the given choices directly.")
    assert first.metadata() == {"scorer": "mcq", "options": {"A": "red", "B": "blue",
                                                             "C": "green"},
                                "hint": "A toy.", "category": "attribute",
                                "l2_category": "perception", "split": "dev"}


@pytest.mark.parametrize("suffix", ["tsv", "jsonl", "parquet"])
def test_circular_files_give_each_rotation_its_question_group(tmp_path: Path,
                                                              suffix: str) -> None:
    rotations = [(0, "B"), (1, "A"), (1_000_000, "C"), (2_000_000, "A"), (1_000_001, "B")]
    if suffix == "parquet":
        path = write_parquet(tmp_path / "c.parquet", [
            {**MMBENCH[0], "index": index, "answer": answer} for index, answer in rotations])
    elif suffix == "tsv":
        png = base64.b64encode(PNG).decode()
        path = write_tsv(tmp_path, *([str(index), "Q?", "", "x", "y", "z", "", answer, "cat",
                                      png] for index, answer in rotations))
    else:
        path = write_jsonl(tmp_path, *({"id": index, "image": "img/cat.png", "question": "Q?",
                                        "choices": ["x", "y", "z"], "answer": answer}
                                       for index, answer in rotations))
    groups = {item.id: item.circular_group for item in load(path).items}
    assert groups == {"0": "0", "1": "1", "1000000": "0", "2000000": "0", "1000001": "1"}


def test_mmmu_items_carry_several_images_and_their_options_list(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "mmmu" / "validation-00000-of-00001.parquet",
                         SAMPLES["mmmu"])
    mcq, open_question = load(path.parent).items
    assert mcq.images == ((PNG, "image/png"), (GIF, "image/gif"))
    assert (mcq.choices, mcq.answer, mcq.scorer, mcq.category) == (
        {"A": "the first", "B": "the second", "C": "neither"}, "B", "mcq", "Biology")
    assert mcq.prompt() == ("Compare <image 1> and <image 2>.\nA. the first\nB. the second\n"
                            "C. neither\n\nAnswer with the option's letter from the given "
                            "choices directly.")
    assert (open_question.scorer, open_question.choices, open_question.answer) == (
        "exact", {}, "4")
    assert open_question.prompt() == ("How many cells in <image 1>?\n\n"
                                      "Answer the question using a single word or phrase.")


def test_scienceqa_and_ai2d_answers_are_option_indices(tmp_path: Path) -> None:
    sqa = write_parquet(tmp_path / "sqa.parquet", SAMPLES["scienceqa"])
    ai2d = write_parquet(tmp_path / "ai2d.parquet", SAMPLES["ai2d"])
    (whale,), (egg,) = load(sqa).items, load(ai2d).items
    assert (whale.id, whale.answer, whale.choices["B"], whale.category, whale.l2_category,
            whale.hint, whale.family) == ("0", "B", "whale", "Classification", "natural science",
                                          None, "scienceqa")
    assert whale.prompt() == ("Which is a mammal?\nA. frog\nB. whale\nAnswer with the option's "
                              "letter from the given choices directly.")
    assert (egg.answer, egg.scorer, egg.family) == ("A", "mcq", "ai2d")


def test_open_answer_schemas_pick_their_scorer_and_prompt(tmp_path: Path) -> None:
    chartqa = write_parquet(tmp_path / "chartqa.parquet", SAMPLES["chartqa"])
    chartqa_m4 = write_parquet(tmp_path / "m4.parquet", [
        {"image": image(), "query": "What is the peak?", "label": ["45"],
         "human_or_machine": 1}])
    docvqa = write_parquet(tmp_path / "docvqa.parquet", SAMPLES["docvqa"])
    infovqa = write_parquet(tmp_path / "infovqa.parquet", SAMPLES["infovqa"])
    textvqa = write_parquet(tmp_path / "textvqa.parquet", SAMPLES["textvqa"])
    got = {name: load(path).items[0] for name, path in [
        ("chartqa", chartqa), ("m4", chartqa_m4), ("docvqa", docvqa), ("infovqa", infovqa),
        ("textvqa", textvqa)]}
    assert [(i.scorer, i.family, i.category) for i in got.values()] == [
        ("relaxed", "chartqa", "human_test"), ("relaxed", "chartqa", "augmented"),
        ("anls", "docvqa", "handwritten"), ("anls", "infovqa", "single span"),
        ("vqa", "textvqa", None)]
    assert (got["docvqa"].id, got["docvqa"].answer) == ("337", ("1/8/93", "1/8/1993"))
    assert got["m4"].answer == ("45",)  # a list of one label
    assert got["chartqa"].prompt() == "What is the peak?\nAnswer the question with a single word."
    assert got["textvqa"].prompt() == ("What brand?\n"
                                       "Answer the question using a single word or phrase.")


def test_a_folder_of_shards_a_glob_and_a_save_to_disk_folder_load_in_order(
        tmp_path: Path) -> None:
    rows = [{**MMBENCH[0], "index": n} for n in range(5)]
    shards = tmp_path / "shards"
    write_parquet(shards / "test-00000-of-00002.parquet", rows[:3])
    write_parquet(shards / "test-00001-of-00002.parquet", rows[3:])
    saved = tmp_path / "saved"
    saved.mkdir()
    table = pa.Table.from_pylist(rows, schema=pq.read_schema(
        shards / "test-00000-of-00002.parquet"))
    with pa.ipc.new_stream(saved / "data-00000-of-00001.arrow", table.schema) as writer:
        writer.write_table(table)
    (saved / "state.json").write_text(json.dumps(
        {"_data_files": [{"filename": "data-00000-of-00001.arrow"}], "_split": "test"}))
    (saved / "dataset_info.json").write_text("{}")
    for path in (shards, tmp_path / "shards" / "test-*.parquet", saved):
        assert [item.id for item in load(path).items] == ["0", "1", "2", "3", "4"]
    assert source_files(shards) == sorted(shards.iterdir())
    assert source_files(saved) == [saved / "data-00000-of-00001.arrow"]


def test_the_columns_override_maps_any_layout(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "custom.parquet", [
        {"qid": "q1", "prompt_text": "Which?", "gold": "C", "pic": image(), "pic2": image(GIF),
         "opts": ["x", "y", "z"], "topic": "misc"}])
    columns = parse_columns("id=qid, question=prompt_text,answer=gold,images=pic+pic2,"
                            "choices=opts,category=topic")
    (item,) = load(path, columns=columns).items
    assert (item.id, item.question, item.answer, item.choices, item.category, len(item.images)
            ) == ("q1", "Which?", "C", {"A": "x", "B": "y", "C": "z"}, "misc", 2)
    tsv = write_tsv(tmp_path, ["7", "Q?", "", "a", "b", "", "", "B", "cat",
                               base64.b64encode(PNG).decode()],
                    header=["qid", "question", "hint", "A", "B", "C", "D", "gold", "category",
                            "image"])
    (row,) = load(tsv, columns=parse_columns("id=qid,answer=gold")).items
    assert (row.id, row.answer) == ("7", "B")


@pytest.mark.parametrize(("spec", "message"), [
    ("id", "'id' is not field=column"),
    ("colour=c", "unknown field 'colour'"),
    ("schema=cifar", "unknown schema 'cifar' (known: mmmu, mmbench"),
    ("question=", "'question=' is not field=column"),
])
def test_bad_columns_are_refused_naming_the_part(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        parse_columns(spec)


def test_multi_image_jsonl_and_tsv(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "b.gif").write_bytes(GIF)
    jsonl = write_jsonl(tmp_path, {"id": 1, "image": ["img/cat.png", "img/b.gif"],
                                   "question": "Same?", "answer": "no"})
    assert load(jsonl).items[0].images == ((PNG, "image/png"), (GIF, "image/gif"))
    pair = str([base64.b64encode(PNG).decode(), base64.b64encode(GIF).decode()])
    tsv = write_tsv(tmp_path, ["1", "Same?", "", "yes", "no", "", "", "B", "", pair])
    assert len(load(tsv).items[0].images) == 2


def _bad(tmp_path: Path, rows: list[dict[str, Any]], name: str = "bad.parquet") -> str:
    path = write_parquet(tmp_path / name, rows)
    with pytest.raises(DatasetError) as error:
        load(path)
    return str(error.value).replace(str(tmp_path), "T")


def test_bad_hub_rows_name_the_file_row_and_field(tmp_path: Path) -> None:
    second = {**MMBENCH[0], "index": 1}
    assert _bad(tmp_path, [MMBENCH[0], {**second, "image": image(b"nope")}]) == (
        "T/bad.parquet:2: image: not a PNG, JPEG, GIF, WEBP or BMP image")
    assert _bad(tmp_path, [MMBENCH[0], {**second, "answer": "D"}]) == (
        "T/bad.parquet:2: answer: 'D' is not one of the options' letters A, B, C")
    assert _bad(tmp_path, [MMBENCH[0], {**second, "image": image(None, "gone.png")}]) == (
        "T/bad.parquet:2: image: no such file 'gone.png' (relative to T/bad.parquet)")
    assert _bad(tmp_path, [MMBENCH[0], {**second, "index": 0}]) == (
        "T/bad.parquet:2: id: duplicate id '0' (first on line 1)")
    assert _bad(tmp_path, [{"question": "Q?", "choices": ["a", "b"], "answer": 2, "hint": "",
                            "subject": "s", "image": image()}]) == (
        "T/bad.parquet:1: answer: 2 is not the index of one of the 2 options")
    assert _bad(tmp_path, [{"question": "Q?", "choices": ["a", "b"], "answer": 0, "hint": "",
                            "subject": "s", "image": None}]) == (
        "T/bad.parquet:1: image: missing (vlmd asks questions about images; a text-only row, "
        "as in ScienceQA's full set? use its image subset)")
    assert _bad(tmp_path, [{"q": "Q?", "label": "a", "picture": image()}]) == (
        "T/bad.parquet: columns q, label, picture do not match no known schema (mmmu, mmbench, "
        "scienceqa, ai2d, textvqa, docvqa, infovqa, chartqa, generic): name them with "
        "--columns, e.g. id=qid,question=query,answer=label,image=img")


def test_unreadable_hub_datasets_say_why(tmp_path: Path) -> None:
    (tmp_path / "corrupt.parquet").write_bytes(b"PAR1 not really")
    empty = tmp_path / "empty"
    empty.mkdir()
    nested = tmp_path / "nested"
    write_parquet(nested / "Biology" / "validation-0.parquet", MMBENCH)
    splits = tmp_path / "dict"
    (splits / "test").mkdir(parents=True)
    (splits / "test" / "state.json").write_text("{}")
    (splits / "dataset_dict.json").write_text('{"splits": ["test"]}')
    for path, message in [
        (tmp_path / "corrupt.parquet", "corrupt.parquet: not a readable parquet file: "),
        (empty, "empty: no .parquet or .arrow files in this folder"),
        (nested, "nested: no .parquet or .arrow files in this folder; its subfolders have "
                 f"some (Biology): name one, or a pattern such as {nested}/*/test-*.parquet"),
        (splits, "dict: a datasets DatasetDict: name one split's folder (test)"),
        (splits / "test", "state.json: not a datasets state file (KeyError: '_data_files')"),
        (tmp_path / "none-*.parquet", "none-*.parquet: the pattern matches no .parquet or "
                                      ".arrow file"),
    ]:
        with pytest.raises(DatasetError) as error:
            load(path)
        assert message in str(error.value)
