"""Anthropic's Messages API via the official ``anthropic`` SDK.

System messages go to the ``system`` parameter. Anthropic has no JSON mode: the prompt asks
for JSON and `qlp.llm.structured` strips a fence around the answer. Retries and timeouts work
exactly as in `openai_compat` (SDK retries off, hard ``asyncio.timeout`` per attempt).
"""

from __future__ import annotations

import asyncio
import json

import anthropic
from anthropic import AsyncAnthropic
from anthropic.types import Message as AnthropicMessage
from anthropic.types import MessageParam

from qlp.config import ModelPrice
from qlp.errors import ConfigError
from qlp.llm.base import LLMRequest, LLMResponse, Usage
from qlp.llm.pricing import cost_for_any
from qlp.llm.retry import (
    OnRetry,
    RetryPolicy,
    failure_from_status,
)
from qlp.llm.sdk_client import SDKClient

DEFAULT_BASE_URL = "https://api.anthropic.com"
# A gateway in front of Anthropic may need no key, but the SDK insists on one.
PLACEHOLDER_API_KEY = "not-needed"


class AnthropicClient(SDKClient[AnthropicMessage]):
    """An `LLMClient` for Claude models."""

    def __init__(
        self,
        *,
        model: str,
        api_key: str | None,
        base_url: str | None = None,
        timeout_s: float,
        retry: RetryPolicy,
        prices: dict[str, ModelPrice],
        provider_name: str = "anthropic",
        on_retry: OnRetry | None = None,
    ) -> None:
        if not model:
            raise ConfigError("no model configured: set QLP_LLM_MODEL")
        if timeout_s <= 0:
            raise ConfigError("QLP_LLM_TIMEOUT_S must be greater than 0")
        if not api_key and not base_url:
            raise ConfigError(
                "Anthropic needs an API key: set ANTHROPIC_API_KEY (or QLP_ANTHROPIC_API_KEY)"
            )
        self._model = model
        self._provider = provider_name
        self._timeout_s = timeout_s
        self._retry = retry
        self._prices = prices
        self._on_retry = on_retry
        self._secrets = (api_key,) if api_key else ()
        self._endpoint = base_url or DEFAULT_BASE_URL
        # An explicit key (even a placeholder) stops the SDK from hunting for credentials in
        # the environment and in profile files.
        self._client = AsyncAnthropic(
            api_key=api_key or PLACEHOLDER_API_KEY,
            base_url=self._endpoint,
            timeout=timeout_s,
            max_retries=0,
        )

    async def aclose(self) -> None:
        await self._client.close()

    # -- one attempt -----------------------------------------------------------------
    async def _attempt(self, request: LLMRequest) -> AnthropicMessage:
        system = "\n\n".join(m.content for m in request.messages if m.role == "system")
        messages: list[MessageParam] = [
            {"role": "assistant", "content": m.content}
            if m.role == "assistant"
            else {"role": "user", "content": m.content}
            for m in request.messages
            if m.role != "system"
        ]
        try:
            async with asyncio.timeout(self._timeout_s):
                return await self._client.messages.create(
                    model=self._model,
                    max_tokens=request.max_tokens,
                    messages=messages,
                    system=system if system else anthropic.omit,
                    # No temperature: the Messages API of this SDK generation has none.
                    timeout=self._timeout_s,
                )
        except TimeoutError:
            raise self._timed_out() from None
        except anthropic.APITimeoutError:
            raise self._timed_out() from None
        except anthropic.APIStatusError as exc:
            raise failure_from_status(
                exc.status_code,
                exc.response.headers,
                exc.body,
                exc.api_message or exc.message,
                secrets=self._secrets,
            ) from None
        except anthropic.APIConnectionError as exc:
            raise self._unreachable(exc) from None
        except json.JSONDecodeError as exc:
            raise self._not_json(exc) from None
        except anthropic.APIResponseValidationError as exc:
            raise self._bad_shape(exc.message) from None
        except (anthropic.AnthropicError, ValueError) as exc:
            raise self._refused(exc) from None

    def _response(
        self, request: LLMRequest, message: AnthropicMessage, attempts: int, latency_s: float
    ) -> LLMResponse:
        content = "".join(block.text for block in message.content if block.type == "text")
        u = message.usage
        # Cached prompt tokens are still prompt tokens for budgets.
        input_tokens = (
            u.input_tokens + (u.cache_creation_input_tokens or 0) + (u.cache_read_input_tokens or 0)
        )
        usage = Usage(input_tokens=input_tokens, output_tokens=u.output_tokens)
        reported_model = message.model or self._model
        return LLMResponse(
            content=content,
            provider=self._provider,
            model=reported_model,
            usage=usage,
            cost_usd=cost_for_any(usage, (reported_model, self._model), self._prices),
            latency_s=latency_s,
            attempts=attempts,
            finish_reason=message.stop_reason,
            raw={"id": message.id},
        )
