"""The chaos's options: those `scripts/chaos` takes, resolved into the `Options` a chaos runs."""

from __future__ import annotations

import argparse
import random
from collections.abc import Callable

import msgspec

QUICK = {"items": 1000, "agent_faults": 2, "item_ms": 50.0}
FULL = {"items": 2000, "agent_faults": 3, "item_ms": 40.0}


class Options(msgspec.Struct, frozen=True):
    """What one chaos does: two runs of `items` items on `shards` agents each, with
    `daemon_kills` kills of vlmd in the first and `agent_faults` faults of each kind in the
    second; `seed` draws every random point, so the same options repeat a chaos."""

    items: int
    daemon_kills: int
    agent_faults: int
    shards: int
    item_ms: float
    seed: int

    @property
    def model(self) -> str:
        """The demo model the runs evaluate: it answers each item after `item_ms`."""
        return f"demo:instant:{self.item_ms:g}"

    def argv(self) -> list[str]:
        """These options as `scripts/chaos` and `python -m tests.chaos` take them."""
        return ["--items", str(self.items), "--daemon-kills", str(self.daemon_kills),
                "--agent-faults", str(self.agent_faults), "--shards", str(self.shards),
                "--item-ms", f"{self.item_ms:g}", "--seed", str(self.seed)]

    def budget_s(self) -> float:
        """How long a chaos may take before it is stuck: 8 times its runs' model time alone,
        and never under 7 minutes (vlmd's restarts and the agents' start-ups come on top)."""
        model_s = 2 * self.items * self.item_ms / 1000 / self.shards
        return max(420.0, 8 * model_s)


def _at_least(low: float, kind: Callable[[str], float]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = kind(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low:g}, got {text}")
        return value
    parse.__name__ = kind.__name__  # argparse names the type in its errors
    return parse


def add_options(ap: argparse.ArgumentParser) -> None:
    """Add the chaos's options to `ap` (`--quick` and unset ones are resolved by `resolve`)."""
    ap.add_argument("--items", type=_at_least(1, int), help="items per run (default 2000; "
                                                            "--quick 1000)")
    ap.add_argument("--daemon-kills", type=_at_least(0, int), default=5,
                    help="kill -9 of vlmd in phase 1 (default 5)")
    ap.add_argument("--agent-faults", type=_at_least(0, int),
                    help="faults of each kind in phase 2 (default 3; --quick 2)")
    ap.add_argument("--shards", type=_at_least(1, int), default=2,
                    help="agents per run (default 2)")
    ap.add_argument("--item-ms", type=_at_least(1, float),
                    help="model time per item (default 40; --quick 50)")
    ap.add_argument("--seed", type=int, help="repeat the chaos of this seed (default: random)")
    ap.add_argument("--quick", action="store_true", help="a smaller run for CI (1-2 minutes)")


def resolve(args: argparse.Namespace) -> Options:
    """The options `args` (from a parser given `add_options`) ask for, defaults filled in."""
    size = QUICK if args.quick else FULL
    return Options(
        items=int(args.items or size["items"]), daemon_kills=int(args.daemon_kills),
        agent_faults=int(size["agent_faults"] if args.agent_faults is None
                         else args.agent_faults),
        shards=int(args.shards), item_ms=float(args.item_ms or size["item_ms"]),
        seed=random.randrange(1 << 32) if args.seed is None else int(args.seed))


def parse_options(argv: list[str]) -> Options:
    """The options of a `scripts/chaos` command line (a usage error exits, as argparse does)."""
    ap = argparse.ArgumentParser(prog="chaos")
    add_options(ap)
    return resolve(ap.parse_args(argv))
