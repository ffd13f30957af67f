"""The optional judge against a real (scripted) OpenAI-compatible server on loopback: what it
is asked, how its reply is read, and the item.judged event the item's score follows."""

from __future__ import annotations

import io
import time
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.test_backend_openai import scripted_url  # noqa: F401 (a fixture)
from vlmd_agent import wire
from vlmd_agent.evaluate import judge as judging
from vlmd_agent.evaluate.backends.openai import OpenAIBackend
from vlmd_agent.evaluate.datasets import Item
from vlmd_agent.evaluate.judge import Judge, prompt
from vlmd_agent.evaluate.wrapper import Spool, run_item
from vlmd_agent.pipe import Status, WrapperConfig, scored_event

CHOICES = {"A": "red", "B": "blue", "C": "green"}
CFG = WrapperConfig(url="http://127.0.0.1:1", run="r-j", model="-", dataset="-", spool="-",
                    max_new_tokens=16, shard="0/1")


def _item(question: str = "What colour is the ball?") -> Item:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 10, 200)).save(buf, "PNG")
    return Item(id="9", question=question, image=buf.getvalue(), image_mime="image/png",
                answer="B", choices=CHOICES, hint=None, category=None, scorer="mcq")


def test_the_judge_is_asked_with_the_question_options_and_answer() -> None:
    asked = prompt("What colour is the ball?", CHOICES, "kind of sky-coloured")
    assert asked.startswith("You match an answer to the options of a single-choice question.")
    assert "Reply with one uppercase letter: A, B, C, or Z." in asked
    assert asked.endswith("Question: What colour is the ball?\nOptions:\nA. red\nB. blue\n"
                          "C. green\nAnswer: kind of sky-coloured\nYour output: ")
    chinese = prompt("球是什么颜色？", {"A": "红", "B": "蓝"}, "天空的颜色")
    assert chinese.startswith("你负责把一个答案对应到单选题的选项上。")
    assert chinese.endswith("问题：球是什么颜色？\n选项：\nA. 红\nB. 蓝\n答案：天空的颜色\n输出：")


@pytest.mark.parametrize("spec", ["demo:tiny", "openai:", "openai:judge", "hf:/x"])
def test_a_judge_must_be_an_openai_compatible_server(spec: str) -> None:
    with pytest.raises(ValueError, match="bad"):
        judging.check(spec)


@pytest.mark.parametrize(("reply", "letter"), [
    ("C", "C"), ("The answer is B.", "B"), ("Z", "Z"), ("None of them: Z", "Z"),
    ("<think>A or B?</think>A", "A"), ("I cannot tell", None)])
def test_the_reply_is_read_with_the_answer_rules(scripted_url: str, reply: str,  # noqa: F811
                                                 letter: str | None) -> None:
    judge = Judge(f"openai:json?content={reply}@{scripted_url}")
    try:
        verdict = judge.read("What colour is the ball?", CHOICES, "kind of sky-coloured")
    finally:
        judge.close()
    assert (verdict.reply, verdict.letter, verdict.error) == (reply, letter, None)
    sent = httpx.get(f"{scripted_url}/last").json()["body"]
    assert sent["messages"] == [{"role": "user", "content": verdict.prompt}]
    assert (sent["temperature"], sent["stream"]) == (0, False)


def test_an_unreachable_judge_gives_no_letter_and_says_why(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(judging, "RETRY_S", 0.01)
    judge = Judge("openai:judge@http://127.0.0.1:9/v1", timeout_s=2)
    verdict = judge.read("Q?", CHOICES, "hmm")
    judge.close()
    assert (verdict.reply, verdict.letter) == (None, None)
    assert verdict.error is not None and verdict.error.startswith("no reply after 3 tries (")


def _judged(scripted_url: str, answer: str, reply: str) -> dict[str, Any]:  # noqa: F811
    backend = OpenAIBackend(f"stream?first_ms=1&gap_ms=1&text={answer}", scripted_url,
                            max_new_tokens=16)
    judge = Judge(f"openai:json?content={reply}@{scripted_url}")
    try:
        return run_item(CFG, _item(), backend, judge)
    finally:
        backend.close()
        judge.close()


def test_an_undecided_answer_is_judged_and_its_score_follows_the_verdict(
        scripted_url: str) -> None:  # noqa: F811
    outcome = _judged(scripted_url, "the%20colour%20of%20the%20sky", "B")
    judged = outcome["judged"]
    assert wire.event_errors(judged, 0, time.time()) == []
    assert (judged["kind"], judged["key"]) == ("item.judged", "r-j/item/9/judged")
    assert {k: judged["body"][k] for k in ("item", "reply", "letter", "shard")} == {
        "item": "9", "reply": "B", "letter": "B", "shard": "0/1"}
    assert judged["body"]["judge"] == f"openai:json?content=B@{scripted_url}"
    assert "Answer: the colour of the sky\n" in judged["body"]["prompt"]
    event = scored_event(CFG.run, {k: v for k, v in outcome.items() if k != "judged"})
    assert wire.event_errors(event, 0, time.time()) == []
    body = event["body"]
    assert (body["answer"], body["score"], body["choice"], body["judged"]) == (
        "the colour of the sky", 1.0, "B", True)
    assert "unparsed" not in body
    wrong = scored_event(CFG.run, {k: v for k, v in _judged(
        scripted_url, "hmm", "Z").items() if k != "judged"})["body"]
    assert (wrong["score"], wrong.get("choice"), wrong["judged"]) == (0.0, None, True)
    lost = scored_event(CFG.run, {k: v for k, v in _judged(
        scripted_url, "hmm", "no%20idea").items() if k != "judged"})["body"]
    # a reply that names no option decides nothing: the answer stays unparsed
    assert (lost["score"], lost["unparsed"], "judged" in lost) == (0.0, True, False)


def test_a_decided_answer_is_never_put_to_the_judge(scripted_url: str) -> None:  # noqa: F811
    outcome = _judged(scripted_url, "B", "C")
    assert "judged" not in outcome and "verdict" not in outcome
    assert scored_event(CFG.run, outcome)["body"]["score"] == 1.0


def test_the_spool_sends_the_verdict_before_the_item() -> None:
    sent: list[str] = []

    class Box:
        def put(self, event: dict[str, Any]) -> None:
            sent.append(event["kind"])

    spool = Spool(CFG, Status(None), Box())  # type: ignore[arg-type]
    outcome = {"key": "r-j/item/9/ok", "kind": "item.completed", "ts": time.time(),
               "body": {"item": "9", "question": "Q", "expected": "B", "answer": "hmm"},
               "metrics": {}, "scorer": "mcq", "choices": CHOICES, "verdict": "B",
               "judged": wire.envelope("r-j", "item.judged", {"item": "9", "judge": "x",
                                                              "prompt": "p"})}
    spool.item(outcome)
    assert sent == ["item.judged", "item.completed"]
