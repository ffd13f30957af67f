"""Teach a demo model the demo dataset's questions: a short, deterministic run on one CPU thread.

The training items are drawn exactly as `vlmd_agent.evaluate.demo_data` draws its pictures and
asks its
questions, but from `TRAIN_SEED`, so a demo dataset built with its default seed (0) is held out.
Each item is turned into the very text the ``hf:`` backend sends (the processor's chat template
around `datasets.Item.prompt`), and the model learns, by teacher forcing, to continue it with the
right option's text (``red``, ``circle``, ``3``) and then end of sequence. The MCQ scorer matches
option text, so a greedy answer of ``red`` picks the option that reads ``red``.

Two things keep this cheap on one CPU thread. Every prompt starts with the same tokens ("user: "
and the image's, most of the sequence), and in a causal model what follows cannot change them:
so each picture runs that prefix once and all its questions continue from the key/value cache,
the same arithmetic as running each prompt whole. And only the answer positions go through the
language-model head, the only ones the loss needs.

torch is the agent's optional ``hf`` extra, imported inside the functions that need it.
"""

from __future__ import annotations

import io
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, cast

from vlmd_agent.evaluate import demo_data
from vlmd_agent.evaluate.datasets import Item

TRAIN_SEED = 1_000  # not 0: `demo_data.build` uses 0 by default, and that set is for evaluation
ROUNDS = 2  # each picture is asked each kind of question (colour, count, shape) twice
QUESTIONS_PER_IMAGE = 3 * ROUNDS
WARMUP = 0.1  # the fraction of steps over which the learning rate climbs to its peak


@dataclass(frozen=True)
class TrainPlan:
    """How long and how hard to train: distinct pictures, optimiser steps, batch, peak rate."""

    images: int
    steps: int
    batch_size: int
    learning_rate: float


def pictures(count: int, seed: int = TRAIN_SEED) -> list[list[Item]]:
    """``count`` pictures drawn like the demo dataset's, each asked about its colour, its
    shapes' count and their kind, `ROUNDS` times over (with the options in other orders)."""
    rng = random.Random(seed)
    drawn: list[list[Item]] = []
    for picture in range(count):
        scene = demo_data._Scene(
            rng.choice(demo_data.SHAPES), rng.choice(sorted(demo_data.COLOURS)), rng.randint(1, 4)
        )
        png = demo_data._draw(scene, rng)
        rows: list[dict[str, object]] = []
        # demo_data picks the category at random: draw until each has come up `ROUNDS` times
        while len(rows) < QUESTIONS_PER_IMAGE:
            row = demo_data._question(len(rows), scene, "", rng.randrange(4), rng)
            if sum(r["category"] == row["category"] for r in rows) < ROUNDS:
                rows.append(row)
        drawn.append([Item(
            id=f"train-{picture}-{n}", question=str(row["question"]), image=png,
            image_mime="image/png", answer=str(row["answer"]),
            choices=cast(dict[str, str], row["choices"]), hint=None,
            category=str(row["category"]), scorer="mcq",
        ) for n, row in enumerate(rows)])
    return drawn


def answer_text(item: Item) -> str:
    """What the model is taught to say: the right option's text."""
    assert isinstance(item.answer, str)
    return item.choices[item.answer]


def corpus(count: int = 200) -> Iterator[str]:
    """Text for training the tokenizer: chat prompts as the backend builds them, and answers."""
    for item in (item for asked in pictures(count) for item in asked):
        yield f"user: <image>\n{item.prompt()}\nassistant:"
        yield answer_text(item)


def chat_text(processor: Any, item: Item) -> str:
    """The prompt exactly as `HFBackend` renders it through the processor's chat template."""
    content = [{"type": "image"}, {"type": "text", "text": item.prompt()}]
    messages = [{"role": "user", "content": content}]
    return str(processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))


@dataclass(frozen=True)
class _Data:
    """Every training example as tensors. All prompts start with the same tokens ("user: " and
    the image's), so each picture's prefix runs once and its questions continue from the cache."""

    pixel_values: Any  # (pictures, 3, side, side)
    prefix: Any  # (1, prefix length): up to the last image token
    suffixes: Any  # (pictures, questions, length): the rest of the prompt, then the answer
    masks: Any  # (pictures, questions, length): 0 where a suffix is padded
    rows: list[list[list[int]]]  # per picture, per question: suffix positions that are taught
    targets: list[list[list[int]]]  # ... and the tokens they must predict: the answer, then EOS


def _tensors(processor: Any, drawn: list[list[Item]]) -> _Data:
    import torch
    from PIL import Image

    tokenizer = processor.tokenizer
    images = []
    for asked in drawn:
        with Image.open(io.BytesIO(asked[0].image)) as picture:
            images.append(picture.convert("RGB"))
    pixel_values = processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
    texts = [[chat_text(processor, item) for item in asked] for asked in drawn]
    # the processor expands <image> to one token per patch: ask it how many, once
    first = processor(images=images[:1], text=texts[0][:1])["input_ids"][0]
    token, token_id = processor.image_token, processor.image_token_id
    expand = token * first.count(token_id)
    split = len(first) - first[::-1].index(token_id)
    prefix = first[:split]
    suffixes, rows, targets = [], [], []
    for asked, prompts in zip(drawn, texts, strict=True):
        ids = tokenizer([text.replace(token, expand) for text in prompts])["input_ids"]
        answers = tokenizer([answer_text(item) for item in asked])["input_ids"]
        if any(prompt[:split] != prefix for prompt in ids):
            raise RuntimeError("demo prompts do not share their image prefix")
        pairs = list(zip(ids, answers, strict=True))
        suffixes.append([prompt[split:] + answer for prompt, answer in pairs])
        # the last prompt token predicts the answer's first token; the answer's last, EOS
        rows.append([list(range(len(p) - split - 1, len(p) - split + len(a))) for p, a in pairs])
        targets.append([[*answer, tokenizer.eos_token_id] for answer in answers])
    length = max(len(suffix) for group in suffixes for suffix in group)
    pad = [tokenizer.pad_token_id] * length
    return _Data(
        pixel_values=pixel_values,
        prefix=torch.tensor([prefix]),
        suffixes=torch.tensor([[s + pad[len(s) :] for s in group] for group in suffixes]),
        masks=torch.tensor([[[1] * len(s) + [0] * (length - len(s)) for s in group]
                            for group in suffixes]),
        rows=rows,
        targets=targets,
    )


def _loss(model: Any, data: _Data, batch: list[int]) -> Any:
    """Mean cross-entropy over the answer tokens of every question about the pictures ``batch``."""
    import torch
    import torch.nn.functional as functional

    prefix = data.prefix.expand(len(batch), -1)
    cache = model.model(
        input_ids=prefix, pixel_values=data.pixel_values[batch], use_cache=True
    ).cache
    cache.batch_repeat_interleave(QUESTIONS_PER_IMAGE)
    masks = data.masks[batch].flatten(0, 1)
    seen = torch.ones(len(masks), prefix.shape[1], dtype=masks.dtype)
    hidden = model.model(
        input_ids=data.suffixes[batch].flatten(0, 1),
        attention_mask=torch.cat([seen, masks], 1),
        cache=cache,
    ).last_hidden_state
    where = [(QUESTIONS_PER_IMAGE * n + q, row) for n, p in enumerate(batch)
             for q in range(QUESTIONS_PER_IMAGE) for row in data.rows[p][q]]
    wanted = [t for p in batch for question in data.targets[p] for t in question]
    picked = hidden[[i for i, _ in where], [r for _, r in where]]
    return functional.cross_entropy(model.lm_head(picked), torch.tensor(wanted))


def train(model: Any, processor: Any, plan: TrainPlan, seed: int = TRAIN_SEED,
          progress: Callable[[int, int], None] | None = None) -> list[float]:
    """Train ``model`` in place on `pictures` by teacher forcing; return every step's loss;
    ``progress(step, steps)`` is told after each step.

    AdamW with a linear warm-up to ``plan.learning_rate`` and a cosine decay to zero; batches of
    ``plan.batch_size`` pictures (each with all its questions) come from a seeded generator, and
    torch runs on one thread (restored afterwards), so the same plan and seed give the same
    weights, bit for bit, on the same machine.
    """
    import math

    import torch

    warmup = max(1, int(plan.steps * WARMUP))

    def rate(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, plan.steps - warmup)))

    threads = torch.get_num_threads()
    # more threads would not be faster at this size, and on a shared machine far slower
    torch.set_num_threads(1)
    losses: list[float] = []
    try:
        data = _tensors(processor, pictures(plan.images, seed))
        generator = torch.Generator().manual_seed(seed)
        optimiser = torch.optim.AdamW(
            model.parameters(), lr=plan.learning_rate, betas=(0.9, 0.98)
        )
        schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, rate)
        model.train()
        order: list[int] = []
        for step in range(plan.steps):
            if len(order) < plan.batch_size:
                order = torch.randperm(plan.images, generator=generator).tolist()
            batch, order = order[: plan.batch_size], order[plan.batch_size :]
            loss = _loss(model, data, batch)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            losses.append(float(loss.detach()))
            if progress is not None:
                progress(step + 1, plan.steps)
    finally:
        torch.set_num_threads(threads)
        model.eval()
    return losses
