from __future__ import annotations

import pytest

from qlp.config import DEFAULT_PRICES, ModelPrice
from qlp.llm.base import Usage
from qlp.llm.pricing import cost_for_any, cost_usd, find_price

TABLE = {
    "gpt-4o": ModelPrice(input_per_mtok=2.5, output_per_mtok=10.0),
    "gpt-4o-mini": ModelPrice(input_per_mtok=0.15, output_per_mtok=0.6),
    "gpt-4": ModelPrice(input_per_mtok=30.0, output_per_mtok=60.0),
    "llama3": ModelPrice(input_per_mtok=0.0, output_per_mtok=0.0),
}


def test_known_model_cost() -> None:
    usage = Usage(input_tokens=1_000_000, output_tokens=500_000)
    assert cost_usd(usage, "gpt-4o", TABLE) == pytest.approx(2.5 + 5.0)


def test_unknown_model_is_none_not_zero() -> None:
    assert cost_usd(Usage(10, 10), "mystery-model", TABLE) is None
    assert cost_usd(Usage(10, 10), "", TABLE) is None


@pytest.mark.parametrize(
    ("model", "key"),
    [
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("gpt-4o-mini", "gpt-4o-mini"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("gpt-4o-mini-x", "gpt-4o-mini"),
        ("GPT-4o-2024-08-06", "gpt-4o"),
        ("llama3:8b", "llama3"),
        ("gpt-4-0613", "gpt-4"),
    ],
)
def test_prefix_matching_prefers_the_longest_key(model: str, key: str) -> None:
    assert find_price(model, TABLE) is TABLE[key]


def test_prefix_must_end_at_a_separator() -> None:
    # "gpt-4" is a different model from "gpt-4o..."; it must not lend its price.
    assert find_price("gpt-4omni", {"gpt-4": TABLE["gpt-4"]}) is None
    assert find_price("gpt-4o", {"gpt-4": TABLE["gpt-4"]}) is None


def test_scripted_is_known_free() -> None:
    assert cost_usd(Usage(100, 100), "scripted", DEFAULT_PRICES) == 0.0


def test_cost_for_any_falls_back_to_the_next_name() -> None:
    usage = Usage(input_tokens=2_000_000, output_tokens=0)
    assert cost_for_any(usage, ("my-deployment", "gpt-4o-mini"), TABLE) == pytest.approx(0.3)
    assert cost_for_any(usage, ("a", "b"), TABLE) is None
