"""Tiny LLaVA-style demo models, built offline and deterministically, and taught the demo set.

`build(name, directory)` writes a model folder that `AutoProcessor` and
`AutoModelForImageTextToText` load like any local checkpoint, so the ``hf:`` backend (and
``transformers serve``) run it through the same code path as a real VLM. Nothing is downloaded:
the byte-level BPE tokenizer is trained in-process on demo prompts, the weights start from a
fixed seed and are then trained briefly on CPU (`vlmd_agent.evaluate.demo_train`) to answer the demo
dataset's questions with the right option's text. The two models trade accuracy for cost:

- ``tiny``: 32x32 images in 4-pixel patches, ~120k parameters, ~5 s of training: it mostly
  tells colours apart, shapes and counts hardly better than chance (~0.5 on the demo set).
- ``small``: 64x64 images in 8-pixel patches, ~1.3M parameters, ~22 s of training: colours,
  most shapes and most counts (~0.83), at about twice tiny's time per answer.

Both cut the picture into the same 8x8 grid of patches, so their prompts are equally long; what
holds tiny back is its short training (with fewer, coarser patches this task gets easier, not
harder: an 8x8-pixel tiny learns it almost perfectly).
torch, transformers and tokenizers are the agent's optional ``hf`` extra: they are imported
inside the functions that need them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vlmd_agent.evaluate import demo_train
from vlmd_agent.evaluate.demo_train import TrainPlan

RECIPE_VERSION = 3  # 3: MMBench's prompt (lmms-eval's); 2: vlmd's own; 1 was untrained
MANIFEST = "vlmd-demo-manifest.json"
SEED = 0
IMAGE_TOKEN = "<image>"
SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", IMAGE_TOKEN)
# A literal newline after a block tag is trimmed by the template engine; '\n' must be an expression.
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: "
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] in ('image', 'image_url') %}<image>{{ '\\n' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


@dataclass(frozen=True)
class DemoSpec:
    """The shape of one demo model: image size, vision tower and language model widths, the
    standard deviation of the initial weights, and how it is trained."""

    image_size: int
    patch_size: int
    vocab_size: int
    vision_hidden: int
    vision_layers: int
    vision_heads: int
    text_hidden: int
    text_layers: int
    text_heads: int
    text_intermediate: int
    # with transformers' default of 0.02, models this small guess among the options for hundreds
    # of steps before they start to use the picture; a larger start gets there far sooner
    init_std: float
    train: TrainPlan


SPECS: dict[str, DemoSpec] = {
    "tiny": DemoSpec(
        image_size=32,
        patch_size=4,
        vocab_size=512,
        vision_hidden=32,
        vision_layers=2,
        vision_heads=2,
        text_hidden=48,
        text_layers=2,
        text_heads=4,
        text_intermediate=96,
        init_std=0.1,
        train=TrainPlan(images=600, steps=150, batch_size=8, learning_rate=3e-3),
    ),
    "small": DemoSpec(
        image_size=64,
        patch_size=8,
        vocab_size=512,
        vision_hidden=64,
        vision_layers=2,
        vision_heads=4,
        text_hidden=192,
        text_layers=2,
        text_heads=4,
        text_intermediate=576,
        init_std=0.06,
        train=TrainPlan(images=1000, steps=240, batch_size=6, learning_rate=1.5e-3),
    ),
}


def names() -> list[str]:
    """The demo model names that `build` accepts."""
    return sorted(SPECS)


def build(name: str, directory: Path, progress: Callable[[int, int], None] | None = None
          ) -> Path:
    """Build demo model ``name`` into ``directory / name`` and return that folder;
    ``progress(step, steps)`` hears of each training step while it builds.

    Idempotent: a manifest records the recipe and a SHA-256 of every file; when it matches what
    is on disk the folder is returned untouched, otherwise it is rebuilt (into a temporary
    folder, then renamed into place, so a crash never leaves a half-built model behind).
    Two builds of the same name give byte-identical files on the same machine (training runs
    on one thread from fixed seeds); another CPU may round differently and train slightly other
    weights, which the manifest records as they are.

    Errors:
        ValueError: ``name`` is not one of `names()`.
    """
    if name not in SPECS:
        raise ValueError(f"unknown demo model {name!r}; known: {', '.join(names())}")
    spec = SPECS[name]
    target = Path(directory) / name
    recipe = _recipe(name, spec)
    if _is_current(target, recipe):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        _write_model(spec, staging, progress)
        files = {p.name: _sha256(p) for p in sorted(staging.iterdir()) if p.is_file()}
        manifest = {"recipe": recipe, "files": files}
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return target


def _recipe(name: str, spec: DemoSpec) -> dict[str, Any]:
    import transformers

    return {
        "name": name,
        "recipe_version": RECIPE_VERSION,
        "seed": SEED,
        "spec": asdict(spec),
        "transformers": transformers.__version__,
    }


def _is_current(target: Path, recipe: dict[str, Any]) -> bool:
    manifest_path = target / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(manifest, dict) or manifest.get("recipe") != recipe:
        return False
    files = manifest.get("files")
    if not isinstance(files, dict):
        return False
    on_disk = {p.name for p in target.iterdir() if p.is_file()} - {MANIFEST}
    if on_disk != set(files):
        return False
    return all(_sha256(target / fname) == digest for fname, digest in files.items())


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_tokenizer(spec: DemoSpec) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    # Whole lines may become single tokens ("A. red\n"): a demo prompt is a dozen tokens plus
    # the image's, which keeps training and generation fast. Any text still encodes, byte-wise.
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split("\n", behavior="merged_with_previous"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(demo_train.corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        extra_special_tokens={"image_token": IMAGE_TOKEN},
    )


def _write_model(spec: DemoSpec, folder: Path,
                 progress: Callable[[int, int], None] | None = None) -> None:
    import torch
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tokenizer = _write_tokenizer(spec)
    side = spec.image_size
    # The PIL variant: the default one wants torchvision and logs a warning without it.
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": side}, crop_size={"height": side, "width": side}
    )
    processor = LlavaProcessor(  # type: ignore[no-untyped-call]
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=spec.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )
    vision = CLIPVisionConfig(
        hidden_size=spec.vision_hidden,
        intermediate_size=spec.vision_hidden * 2,
        num_hidden_layers=spec.vision_layers,
        num_attention_heads=spec.vision_heads,
        image_size=side,
        patch_size=spec.patch_size,
        projection_dim=spec.vision_hidden,
        initializer_range=spec.init_std,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.text_hidden,
        intermediate_size=spec.text_intermediate,
        num_hidden_layers=spec.text_layers,
        num_attention_heads=spec.text_heads,
        num_key_value_heads=spec.text_heads,
        max_position_embeddings=512,
        initializer_range=spec.init_std,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    torch.manual_seed(SEED)
    model = LlavaForConditionalGeneration(config)
    demo_train.train(model, processor, spec.train, progress=progress)
    model.generation_config.do_sample = False
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
