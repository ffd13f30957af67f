"""`wrapper.item_event`: the event one item becomes, through real backends."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from PIL import Image

from vlmd_agent import wire
from vlmd_agent.evaluate.backends import Backend, load_backend
from vlmd_agent.evaluate.datasets import Item
from vlmd_agent.evaluate.wrapper import item_event
from vlmd_agent.pipe import WrapperConfig

CFG = WrapperConfig(url="http://127.0.0.1:1", run="r-ev", model="demo:instant:0", dataset="-",
                    spool="-", max_new_tokens=8)
CHOICES = {"A": "red", "B": "blue", "C": "green", "D": "yellow"}


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 10, 10)).save(buf, "PNG")
    return buf.getvalue()


def _item(image: bytes, answer: str | tuple[str, ...] = "A") -> Item:
    return Item(id="7", question="What colour?", image=image, image_mime="image/png",
                answer=answer, choices=CHOICES, hint=None, category="colour", scorer="mcq")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    before = torch.get_num_threads()
    backend = load_backend("demo:tiny", models_dir=tmp_path_factory.mktemp("models"),
                           device="cpu")
    yield backend
    backend.close()
    torch.set_num_threads(before)


@pytest.mark.parametrize("shard", [None, "1/4"])
def test_a_completed_item_is_a_valid_event_with_every_field_in_order(shard: str | None) -> None:
    cfg = WrapperConfig(**{**CFG.__dict__, "shard": shard})
    before = time.time()
    event = item_event(cfg, _item(_png(), ("A", "B")), load_backend("demo:instant:0"))
    assert wire.event_errors(event, 0, time.time()) == []
    assert list(event) == ["key", "run", "kind", "ts", "body"]
    assert (event["key"], event["run"], event["kind"]) == ("r-ev/item/7/ok", "r-ev",
                                                           "item.completed")
    assert before <= event["ts"] <= time.time()
    body: dict[str, Any] = event["body"]
    head = ["item", "question", "expected", *(["shard"] if shard else []), "scorer", "options",
            "category", "answer", "score"]
    assert list(body) == [*head, "ttft_ms", "tpot_ms", "e2e_ms", "input_tokens",
                          "output_tokens", "vram_before_mb", "vram_peak_delta_mb",
                          "tokens_source", "vram_source", "vram_note", "itl_ms",
                          "request_start", "timing_source", "choice"]
    assert (body["item"], body["question"], body["expected"]) == ("7", "What colour?",
                                                                  ["A", "B"])
    assert body.get("shard") == shard
    assert (body["scorer"], body["options"], body["category"]) == ("mcq", CHOICES, "colour")
    assert body["score"] == (1.0 if body["answer"] in ("A", "B") else 0.0)
    assert body["choice"] == body["answer"]  # demo:instant answers with a letter
    assert body["output_tokens"] == 4 and len(body["itl_ms"]) == 3
    assert before <= body["request_start"] <= event["ts"] and body["timing_source"] == "user"


def test_a_real_models_answer_and_metrics_go_into_the_event(tiny: Backend) -> None:
    event = item_event(CFG, _item(_png()), tiny)
    assert wire.event_errors(event, 0, time.time()) == []
    body = event["body"]
    assert body["output_tokens"] >= 1 and body["tokens_source"] == "tokenizer"
    assert len(body["itl_ms"]) == body["output_tokens"] - 1
    assert body["ttft_ms"] <= body["e2e_ms"]


def test_an_item_the_backend_refuses_is_a_failed_event_with_a_fresh_key(tiny: Backend) -> None:
    cfg = WrapperConfig(**{**CFG.__dict__, "shard": "0/2", "attempt": 3})
    first, again = (item_event(cfg, _item(b"not an image"), tiny) for _ in range(2))
    assert wire.event_errors(first, 0, time.time()) == []
    assert first["kind"] == "item.failed"
    assert first["key"].startswith("r-ev/item/7/failed/3-") and first["key"] != again["key"]
    assert list(first["body"]) == ["item", "question", "expected", "shard", "scorer", "options",
                                   "category", "reason", "message"]
    assert (first["body"]["shard"], first["body"]["reason"]) == ("0/2", "bad_input")

