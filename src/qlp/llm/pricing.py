"""What a call cost, from its token usage and a price table.

An unknown model has an unknown price: the answer is None, never 0, so summaries can say
"cost unknown" instead of under-reporting.
"""

from __future__ import annotations

from collections.abc import Mapping

from qlp.config import ModelPrice
from qlp.llm.base import Usage

# A table key prices a longer model name only when the name continues after one of these,
# so "gpt-4o" prices "gpt-4o-2024-08-06" and "llama3" prices "llama3:8b", but "gpt-4" does
# not price "gpt-4o" (a different model).
_SEPARATORS = ("-", ":", "@", "/")


def find_price(model: str, prices: Mapping[str, ModelPrice]) -> ModelPrice | None:
    """The price of `model`: exact key first, then the longest key that is a prefix of it."""
    if not model:
        return None
    exact = prices.get(model)
    if exact is not None:
        return exact
    wanted = model.lower()
    best: tuple[int, ModelPrice] | None = None
    for key, price in prices.items():
        k = key.lower()
        if not k:
            continue
        if wanted == k:
            return price
        is_prefix = wanted.startswith(k) and wanted[len(k)] in _SEPARATORS
        if is_prefix and (best is None or len(k) > best[0]):
            best = (len(k), price)
    return best[1] if best is not None else None


def cost_usd(usage: Usage, model: str, prices: Mapping[str, ModelPrice]) -> float | None:
    """US dollars for `usage` on `model`, or None when the model has no price."""
    price = find_price(model, prices)
    if price is None:
        return None
    return (
        usage.input_tokens * price.input_per_mtok + usage.output_tokens * price.output_per_mtok
    ) / 1_000_000


def cost_for_any(
    usage: Usage, models: tuple[str, ...], prices: Mapping[str, ModelPrice]
) -> float | None:
    """Cost priced by the first of `models` that has a price (e.g. reported, then configured)."""
    for name in models:
        cost = cost_usd(usage, name, prices)
        if cost is not None:
            return cost
    return None
