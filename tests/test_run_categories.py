"""A circular MMBench-style file end to end: `vlmd run` (the real CLI, a real daemon whose reads
need a read token, real agents, the project's scripted OpenAI-compatible server) reports both
the accuracy over items and CircularEval's, per category too, in its final summary, in the API's
summary, in answers.csv, and on the run page in a real Chromium (bars sortable by name,
accuracy and items; the answers table with questions, options and image thumbnails)."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.conftest import TOKEN, DaemonProcess, start_daemon
from tests.test_backend_openai import scripted_url  # noqa: F401 (a fixture)
from tests.test_dashboard import CHROMIUM, CHROMIUM_ARGS, shot
from tests.test_hub_datasets import image, write_parquet
from tests.test_run_hub import vlmd_run

READ_TOKEN = "read-token-for-the-run-page-0123456789"
STEP = 1_000_000  # VLMEvalKit's circular convention: rotation k of question i is i + k * STEP

pytestmark = pytest.mark.filterwarnings(  # see tests/test_dashboard.py
    r"ignore:Exception ignored in. <_io.FileIO name=.*\.stderr'"
    ":pytest.PytestUnraisableExceptionWarning")


def rotations(index: int, question: str, options: list[str], right: int, category: str,
              l2: str, copies: int | None = None) -> list[dict[str, Any]]:
    """A question's rows in a circular MMBench file: its options turned once per copy (all of
    them unless `copies`), the right answer's letter moving with them."""
    rows = []
    for k in range(len(options) if copies is None else copies):
        turned = options[k:] + options[:k]
        cells = {letter: (turned[n] if n < len(turned) else None)
                 for n, letter in enumerate("ABCD")}
        rows.append({"index": index + k * STEP, "question": question, "hint": f"hint {index}",
                     **cells, "answer": "ABCD"[turned.index(options[right])],
                     "category": category, "L2-category": l2, "split": "dev", "source": "x",
                     "image": image()})
    return rows


# The model always answers "B": right on one rotation of each question, so only the question
# asked once is credited. Accuracy over items 3/7; CircularEval's 1/3.
ROWS = [*rotations(1, "What colour is the ball?", ["red", "blue", "green", "pink"], 1,
                   "attribute_recognition", "finegrained_perception"),
        *rotations(2, "How many balls?", ["one", "two"], 1, "object_counting",
                   "finegrained_perception"),
        *rotations(3, "What does the sign say?", ["stop", "go"], 1, "OCR",
                   "coarse_perception", copies=1)]
BY_CATEGORY = {
    "OCR": {"items": 1, "accuracy": 1.0, "circular_groups": 1, "circular_accuracy": 1.0},
    "attribute_recognition": {"items": 4, "accuracy": 0.25, "circular_groups": 1,
                              "circular_accuracy": 0.0},
    "object_counting": {"items": 2, "accuracy": 0.5, "circular_groups": 1,
                        "circular_accuracy": 0.0}}
BY_L2 = {
    "coarse_perception": {"items": 1, "accuracy": 1.0, "circular_groups": 1,
                          "circular_accuracy": 1.0},
    "finegrained_perception": {"items": 6, "accuracy": 2 / 6, "circular_groups": 2,
                               "circular_accuracy": 0.0}}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    d = start_daemon(tmp_path_factory.mktemp("vlmd") / "v.db",
                     toml="[server]\nread_token = true\n", env={"VLMD_READ_TOKEN": READ_TOKEN})
    yield d
    d.stop()


@pytest.fixture(scope="module")
def circular_run(daemon: DaemonProcess, tmp_path_factory: pytest.TempPathFactory,
                 scripted_url: str) -> tuple[str, str, Path]:  # noqa: F811
    """The run: its id, what `vlmd run` printed, its answers.csv."""
    folder = tmp_path_factory.mktemp("run")
    path = write_parquet(folder / "mmbench_circular.parquet", ROWS)
    model = f"openai:stream?first_ms=1&gap_ms=1&text=B@{scripted_url}"
    run, done = vlmd_run(daemon, folder, "--model", model, "--dataset", str(path),
                         "--name", "circular")
    assert done.returncode == 0, done.stderr
    csv_path = done.stdout.rsplit("answers.csv: ", 1)[1].strip()
    return run, done.stdout, Path(csv_path)


def test_vlmd_run_prints_both_accuracies_and_the_table_by_category(
        circular_run: tuple[str, str, Path]) -> None:
    _, stdout, _ = circular_run
    lines = stdout.splitlines()
    assert "  circular accuracy: 0.333 over 3 questions (every rotation right; accuracy over " \
           "items: 0.429)" in lines
    at = lines.index("  CATEGORY               ITEMS  ACCURACY  CIRCULAR  QUESTIONS")
    assert lines[at + 1:at + 4] == [  # sorted by name, whatever the case
        "  attribute_recognition      4     0.250     0.000          1",
        "  object_counting            2     0.500     0.000          1",
        "  OCR                        1     1.000     1.000          1"]
    at = lines.index("  L2_CATEGORY             ITEMS  ACCURACY  CIRCULAR  QUESTIONS")
    assert lines[at + 1:at + 3] == [
        "  coarse_perception           1     1.000     1.000          1",
        "  finegrained_perception      6     0.333     0.000          2"]


def test_the_summary_and_answers_csv_carry_categories_and_circular_groups(
        daemon: DaemonProcess, circular_run: tuple[str, str, Path]) -> None:
    run, _, out = circular_run  # out: the answers.csv `vlmd run` wrote
    got = httpx.get(f"{daemon.url}/api/runs/{run}", headers={"authorization": f"Bearer {TOKEN}"})
    state = got.raise_for_status().json()
    s = state["summary"]
    assert (state["accuracy"], state["circular_accuracy"]) == (pytest.approx(3 / 7), 1 / 3)
    assert (s["accuracy"], s["circular_accuracy"], s["circular_groups"], s["unparsed"]) == (
        pytest.approx(3 / 7), 1 / 3, 3, 0)
    assert s["by_category"] == BY_CATEGORY
    assert s["by_l2_category"] == {k: {**v, "accuracy": pytest.approx(v["accuracy"])}
                                   for k, v in BY_L2.items()}
    text = out.read_text()
    header = next(csv.reader(io.StringIO(text)))
    assert header[:14] == ["run", "item", "question", "answer", "expected", "score", "ttft_ms",
                           "tpot_ms", "e2e_ms", "input_tokens", "output_tokens",
                           "vram_before_mb", "vram_peak_delta_mb", "error"]
    assert header.index("category") > header.index("error")
    rows = {r["item"]: r for r in csv.DictReader(io.StringIO(text))}
    assert {item: (r["category"], r["circular_group"], r["choice"], r["score"])
            for item, r in rows.items()} == {
        "1": ("attribute_recognition", "1", "B", "1.0"),
        "1000001": ("attribute_recognition", "1", "B", "0.0"),
        "2000001": ("attribute_recognition", "1", "B", "0.0"),
        "3000001": ("attribute_recognition", "1", "B", "0.0"),
        "2": ("object_counting", "2", "B", "1.0"),
        "1000002": ("object_counting", "2", "B", "0.0"),
        "3": ("OCR", "3", "B", "1.0")}
    assert rows["1000001"]["options"] == '{"A":"blue","B":"green","C":"pink","D":"red"}'


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    p = context.new_page()
    p.set_default_timeout(15_000)
    errors: list[str] = []
    p.on("pageerror", lambda e: errors.append(str(e)))
    yield p
    context.close()
    assert not errors, f"script errors in the page: {errors}"


def bars(page: Page) -> list[tuple[str, str, str, str]]:
    """The category chart's rows: name, items, accuracy, circular accuracy (data attributes)."""
    return [tuple(r) for r in page.eval_on_selector_all("#categories .cat-row", """(rows) =>
        rows.map((li) => [li.dataset.category, li.dataset.items, li.dataset.accuracy,
                          li.dataset.circularAccuracy])""")]


def test_the_run_page_shows_bars_by_category_sortable_and_the_answers_with_thumbnails(
        daemon: DaemonProcess, circular_run: tuple[str, str, Path], page: Page) -> None:
    run, _, _ = circular_run
    page.goto(f"{daemon.url}/run.html?run={run}&token={READ_TOKEN}")
    head = page.locator("#run-head")
    expect(head.locator(".circular-accuracy")).to_have_text("33.3%")
    expect(head.locator(".accuracy")).to_have_text("42.9%")
    rows = page.locator("#categories .cat-row")
    expect(rows).to_have_count(3)
    by_name = [("attribute_recognition", "4", "0.25", "0"), ("object_counting", "2", "0.5", "0"),
               ("OCR", "1", "1", "1")]
    assert bars(page) == by_name
    expect(rows.first.locator(".cat-figures")).to_have_text(
        "25.0% · 4 items · circular 0.0% of 1")
    sort = page.locator("#categories button[data-sort]")
    sort.filter(has_text="accuracy").click()  # best first
    assert [b[0] for b in bars(page)] == ["OCR", "object_counting", "attribute_recognition"]
    sort.filter(has_text="accuracy").click()  # again: worst first
    assert [b[0] for b in bars(page)] == ["attribute_recognition", "object_counting", "OCR"]
    sort.filter(has_text="items").click()  # most first
    assert [b[0] for b in bars(page)] == ["attribute_recognition", "object_counting", "OCR"]
    sort.filter(has_text="name").click()
    assert bars(page) == by_name
    page.select_option("#categories .category-level", "l2_category")
    assert [b[:2] for b in bars(page)] == [("coarse_perception", "1"),
                                           ("finegrained_perception", "6")]

    table = page.locator("#answers-table")
    expect(table).to_have_attribute("data-rows", "7")
    row = table.locator('tbody tr[data-item="1000001"]')
    expect(row.locator("td.question")).to_have_text("What colour is the ball?")
    expect(row.locator("td.options")).to_have_text("A. blue · B. green · C. pink · D. red")
    expect(row.locator("td.options .opt.chosen")).to_have_text("B. green")  # read as B
    expect(row.locator("td.options .opt.expected")).to_have_text("A. blue")
    expect(row.locator("td.category")).to_have_text("attribute_recognition")
    # every thumbnail loaded through the read token (an <img> cannot send a header), once the
    # table is in sight (they load lazily)
    table.scroll_into_view_if_needed()
    page.wait_for_function("""() => { const imgs = [...document.querySelectorAll(
        "#answers-table img.thumb")]; return imgs.length === 7
        && imgs.every((i) => i.complete && i.naturalWidth > 0); }""")
    row.locator("button.show-image").click()
    full = table.locator('.image-row[data-image-for="1000001"] img')
    expect(full).to_be_visible()
    assert full.evaluate("(img) => img.naturalWidth") > 0
    page.select_option("#categories .category-level", "category")
    assert [b[0] for b in bars(page)] == [b[0] for b in by_name]
    shot(page, "run-categories")
