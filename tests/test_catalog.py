"""The event catalog is the one declaration of kinds and fields: validation, Datasette's column
metadata, export types and answers.csv's columns all follow it."""

from __future__ import annotations

import io
from typing import Annotated

import pyarrow.parquet as pq
import pytest

from vlmd.daemon import datasette_meta
from vlmd.projections import answers, export
from vlmd_agent import catalog, wire
from vlmd_agent.catalog import Count, NonNegative, doc

UNIT_SUFFIXES = {"_ms": "ms", "_mb": "MiB"}


def all_fields() -> list[tuple[str, catalog.FieldInfo]]:
    bodies: dict[str, type[catalog.Body]] = {
        **catalog.KINDS, "alert.*": catalog.Alert, "sample": catalog.Sample, "gpu": catalog.Gpu,
        "ram": catalog.Ram}
    return [(kind, f) for kind, body in bodies.items() for f in catalog.fields(body)]


def test_every_field_says_what_it_means_and_names_its_unit() -> None:
    vague = [f"{kind}.{f.name}" for kind, f in all_fields() if len(f.meaning) < 8]
    assert vague == []
    wrong_unit = [f"{kind}.{f.name}: {f.unit}" for kind, f in all_fields()
                  for suffix, unit in UNIT_SUFFIXES.items()
                  if f.name.endswith(suffix) and f.unit != unit]
    assert wrong_unit == []


def test_validation_knows_every_kind_and_field_the_catalog_declares() -> None:
    assert frozenset(catalog.KINDS) == wire.KINDS
    for kind, body in catalog.KINDS.items():
        if kind == "watchdog.sample":
            continue
        schema = wire.BODIES[kind]
        declared = {f.name: f.required for f in catalog.fields(body)}
        assert {**dict.fromkeys(schema.required, True),
                **dict.fromkeys(schema.optional, False)} == declared, kind


def test_validation_enforces_the_declared_types_and_bounds() -> None:
    body = {"item": "1", "answer": "B", "ttft_ms": -1.0, "input_tokens": 1.5, "score": "x"}
    errors = dict(wire.BODIES["item.completed"].errors(body))
    assert errors == {"body.ttft_ms": "must be >= 0",
                      "body.input_tokens": "expected an integer, got number",
                      "body.score": "expected a number, got string"}
    assert dict(wire.BODIES["item.failed"].errors({"item": "1", "reason": "flaky",
                                                   "message": "m"})) == {
        "body.reason": "'flaky' is not one of backend_error, bad_input, oom, timeout"}
    assert dict(wire.BODIES["watchdog.heartbeat"].errors(
        {"host": "h", "pid": 1, "wrapper_pid": None, "wrapper_state": "loading"})) == {}


def test_a_new_field_is_validated_from_its_declaration_alone() -> None:
    class Probe(catalog.Body, kw_only=True, frozen=True):
        joules: Annotated[NonNegative, doc("Energy of the request", "J")]
        chunks: Annotated[Count | None, doc("Chunks streamed")] = None

    schema = wire.schema_of(Probe)
    assert set(schema.required) == {"joules"} and set(schema.optional) == {"chunks"}
    assert schema.valid({"joules": 1.5}) and not schema.valid({"joules": -1.0})
    assert dict(schema.errors({"chunks": -2})) == {"body.joules": "required field is missing",
                                                   "body.chunks": "must be >= 0"}


def test_answers_csv_columns_are_the_catalogs() -> None:
    assert answers.COLUMNS == catalog.ANSWER_COLUMNS
    assert answers.COLUMNS[:14] == (  # today's readers go by position: new columns go after
        "run", "item", "question", "answer", "expected", "score", "ttft_ms", "tpot_ms", "e2e_ms",
        "input_tokens", "output_tokens", "vram_before_mb", "vram_peak_delta_mb", "error")
    item = {f.name for f in catalog.fields(catalog.ItemCompleted)}
    assert set(catalog.ANSWER_COLUMNS) <= item | set(catalog.ROW_FIELDS)


def test_datasette_describes_item_and_sample_columns_from_the_catalog() -> None:
    tables = datasette_meta.metadata()["databases"][datasette_meta.DATABASE]["tables"]
    for column in catalog.answer_columns():
        assert tables["items"]["columns"][column.name] == column.meaning
        assert tables["items"]["units"].get(column.name) == column.unit
    gpu = {f.name: f for f in catalog.fields(catalog.Gpu)}
    assert tables["samples"]["units"]["util_gpu"] == gpu["util_gpu"].unit == "percent"
    assert tables["samples"]["columns"]["power_w"] == gpu["power_w"].meaning


@pytest.mark.parametrize("column", [c.name for c in catalog.answer_columns()])
def test_parquet_export_types_follow_the_catalog(column: str) -> None:
    row = {c: None for c in answers.COLUMNS}
    out = io.BytesIO()
    export.write([row], "parquet", out)
    arrow = str(pq.read_table(io.BytesIO(out.getvalue())).schema.field(column).type)
    declared = next(c.type_name for c in catalog.answer_columns() if c.name == column)
    assert arrow == {"integer": "int64", "number": "double"}.get(declared, "string")
