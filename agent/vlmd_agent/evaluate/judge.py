"""The optional judge: a language model that reads multiple-choice answers the rules cannot.

``--judge openai:NAME@BASE_URL`` names any OpenAI-compatible server. As VLMEvalKit does with its
GPT judge (``extract_answer_from_item``), the judge gets the question, the options and the
model's answer, and is asked which option the answer means, or Z for none; its reply is read
with the same rules as an answer (`vlmd_agent.scoring.read_choice`). The prompt follows
VLMEvalKit's (a Chinese one for Chinese questions), in vlmd's words: a role, the task, the Z
rule, two worked examples, the item.

The wrapper asks only about answers the rules leave undecided, and records every exchange as an
``item.judged`` event (`verdict_event`), so a verdict can be audited and the run replayed.
Greedy decoding (temperature 0); a request that fails is tried `TRIES` times in all.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from vlmd_agent import scoring
from vlmd_agent.evaluate.backends import split_openai

TRIES = 3
RETRY_S = 1.0
MAX_TOKENS = 256
_CJK = re.compile(r"[\u4e00-\u9fff]")
_EXAMPLE_OPTIONS = {"A": "teddy bear", "B": "rabbit", "C": "cat", "D": "dog"}
_EN = """You match an answer to the options of a single-choice question. You get a question, \
its options and an answer; say which option the answer means. If the answer means none of the \
options, say Z. Reply with one uppercase letter: {letters}, or Z.
Example 1:
Question: What is the main object in the image?
Options:
{example}
Answer: a cute teddy bear
Your output: A
Example 2:
Question: What is the main object in the image?
Options:
{example}
Answer: Spider
Your output: Z
Example 3:
Question: {question}
Options:
{options}
Answer: {answer}
Your output: """
_ZH = """你负责把一个答案对应到单选题的选项上。\
你会得到一个问题、它的选项和一个答案，请指出答案对应哪个选项。\
如果答案与所有选项的意思都不同，输出 Z。只输出一个大写字母：{letters}，或 Z。
例 1：
问题：图中最主要的物体是什么？
选项：
A. 泰迪熊
B. 兔子
C. 猫
D. 狗
答案：一只可爱的泰迪熊
输出：A
例 2：
问题：图中最主要的物体是什么？
选项：
A. 泰迪熊
B. 兔子
C. 猫
D. 狗
答案：蜘蛛
输出：Z
例 3：
问题：{question}
选项：
{options}
答案：{answer}
输出："""


@dataclass(frozen=True)
class Verdict:
    """One exchange with the judge: what it was asked, what it replied (None when it could not
    be reached: ``error`` says why) and the letter read from the reply (an option's, or
    `scoring.NO_OPTION`; None when the reply names neither)."""

    prompt: str
    reply: str | None
    letter: str | None
    error: str | None = None


def check(spec: str) -> tuple[str, str]:
    """The (model name, base URL) of a judge spec; ValueError saying why it is not one."""
    scheme, sep, rest = spec.partition(":")
    if scheme != "openai" or not sep or not rest:
        raise ValueError(f"bad judge {spec!r}: expected openai:NAME@BASE_URL (any "
                         "OpenAI-compatible server)")
    return split_openai(spec, rest)


def prompt(question: str, choices: Mapping[str, str], answer: str) -> str:
    """What the judge is asked about `answer` to `question` with these `choices`."""
    options = "\n".join(f"{letter}. {text}" for letter, text in choices.items())
    letters = ", ".join(choices)
    if _CJK.search(question):
        return _ZH.format(letters=letters, question=question, options=options, answer=answer)
    example = "\n".join(f"{letter}. {text}" for letter, text in _EXAMPLE_OPTIONS.items())
    return _EN.format(letters=letters, example=example, question=question, options=options,
                      answer=answer)


class Judge:
    """A judge model behind an OpenAI-compatible server (`check` names the spec's form).

    The bearer token comes from ``$OPENAI_API_KEY`` when it is set. ``timeout_s`` bounds one
    request.
    """

    def __init__(self, spec: str, *, timeout_s: float = 120.0) -> None:
        name, base_url = check(spec)
        root = base_url.rstrip("/")
        self.spec, self.model = spec, name
        self.url = f"{root if root.endswith('/v1') else root + '/v1'}/chat/completions"
        key = os.environ.get("OPENAI_API_KEY")
        self._client = httpx.Client(timeout=httpx.Timeout(timeout_s),
                                    headers={"Authorization": f"Bearer {key}"} if key else {})

    def read(self, question: str, choices: Mapping[str, str], answer: str) -> Verdict:
        """Ask which of `choices` `answer` means; never raises for the server's faults."""
        asked = prompt(question, choices, answer)
        body = {"model": self.model, "messages": [{"role": "user", "content": asked}],
                "temperature": 0, "max_tokens": MAX_TOKENS, "stream": False}
        error = "not asked"
        for attempt in range(TRIES):
            if attempt:
                time.sleep(RETRY_S)
            try:
                response = self._client.post(self.url, json=body)
                response.raise_for_status()
                reply = _content(response.json())
            except (httpx.HTTPError, ValueError) as e:
                error = f"{type(e).__name__}: {e}"[:500]
                continue
            reading = scoring.read_choice(reply, choices)
            letter = reading.letter or (scoring.NO_OPTION if reading.decided else None)
            return Verdict(asked, reply, letter)
        return Verdict(asked, None, None, f"no reply after {TRIES} tries ({error})")

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._client.close()


def verdict_event(item: str, judge: str, verdict: Verdict, shard: str | None) -> dict[str, Any]:
    """The ``item.judged`` body of a verdict."""
    body: dict[str, Any] = {"item": item, "judge": judge, "prompt": verdict.prompt}
    for name in ("reply", "letter", "error"):
        if (value := getattr(verdict, name)) is not None:
            body[name] = value
    if shard:
        body["shard"] = shard
    return body


def _content(payload: Any) -> str:
    """The reply's text; ValueError when the response is not a chat completion."""
    try:
        return str(payload["choices"][0]["message"].get("content") or "")
    except (KeyError, IndexError, TypeError, AttributeError):
        raise ValueError(f"not a chat completion: {str(payload)[:200]}") from None
