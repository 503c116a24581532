"""OpenAI, Azure OpenAI and OpenAI-compatible servers (Ollama, vLLM, llama.cpp) via the
official ``openai`` SDK.

The SDK's retries are off; `qlp.llm.retry` retries instead, the same way for every provider.
Each attempt is bounded twice: by the SDK's HTTP timeout and by a hard ``asyncio.timeout``
(the HTTP timeout bounds each read, not the whole answer).
"""

from __future__ import annotations

import asyncio
import json

import openai
from openai import AsyncAzureOpenAI, AsyncOpenAI
from openai.types.chat import (
    ChatCompletion,
    ChatCompletionAssistantMessageParam,
    ChatCompletionMessageParam,
    ChatCompletionSystemMessageParam,
    ChatCompletionUserMessageParam,
)

from qlp.config import ModelPrice
from qlp.errors import ConfigError, LLMError
from qlp.llm.base import LLMRequest, LLMResponse, Message, Usage
from qlp.llm.pricing import cost_for_any
from qlp.llm.retry import (
    OnRetry,
    RetryPolicy,
    failure_from_status,
)
from qlp.llm.scripted import estimate_tokens
from qlp.llm.sdk_client import SDKClient

DEFAULT_AZURE_API_VERSION = "2024-10-21"
# Local servers usually need no key, but the SDK insists on one.
PLACEHOLDER_API_KEY = "not-needed"


def _message_param(message: Message) -> ChatCompletionMessageParam:
    if message.role == "system":
        return ChatCompletionSystemMessageParam(role="system", content=message.content)
    if message.role == "assistant":
        return ChatCompletionAssistantMessageParam(role="assistant", content=message.content)
    return ChatCompletionUserMessageParam(role="user", content=message.content)


class OpenAICompatClient(SDKClient[ChatCompletion]):
    """An `LLMClient` for the chat completions API.

    With `azure_endpoint` it talks to Azure OpenAI and `model` is the deployment name. With
    `base_url` (and possibly no key) it talks to any OpenAI-compatible server.
    """

    def __init__(
        self,
        *,
        model: str,
        api_key: str | None,
        base_url: str | None = None,
        azure_endpoint: str | None = None,
        azure_api_version: str | None = None,
        timeout_s: float,
        retry: RetryPolicy,
        prices: dict[str, ModelPrice],
        provider_name: str = "openai",
        on_retry: OnRetry | None = None,
    ) -> None:
        if not model:
            raise ConfigError("no model configured: set QLP_LLM_MODEL")
        if timeout_s <= 0:
            raise ConfigError("QLP_LLM_TIMEOUT_S must be greater than 0")
        self._model = model
        self._provider = provider_name
        self._timeout_s = timeout_s
        self._retry = retry
        self._prices = prices
        self._on_retry = on_retry
        self._secrets = (api_key,) if api_key else ()
        self._client: AsyncOpenAI
        if azure_endpoint:
            if base_url:
                raise ConfigError(
                    "set either an Azure OpenAI endpoint or QLP_LLM_BASE_URL, not both"
                )
            if not api_key:
                raise ConfigError(
                    "Azure OpenAI needs an API key: set AZURE_OPENAI_API_KEY "
                    "(or QLP_AZURE_OPENAI_API_KEY)"
                )
            self._endpoint = azure_endpoint
            self._client = AsyncAzureOpenAI(
                azure_endpoint=azure_endpoint,
                api_version=azure_api_version or DEFAULT_AZURE_API_VERSION,
                api_key=api_key,
                timeout=timeout_s,
                max_retries=0,
            )
        else:
            if not api_key and not base_url:
                raise ConfigError(
                    "OpenAI needs an API key: set OPENAI_API_KEY (or QLP_OPENAI_API_KEY), "
                    "or set QLP_LLM_BASE_URL to use an OpenAI-compatible server"
                )
            self._endpoint = base_url or "https://api.openai.com/v1"
            self._client = AsyncOpenAI(
                api_key=api_key or PLACEHOLDER_API_KEY,
                base_url=base_url,
                timeout=timeout_s,
                max_retries=0,
            )
        # The official API wants max_completion_tokens (reasoning models refuse max_tokens);
        # Azure API versions and compatible servers are safest with the classic max_tokens.
        self._use_max_completion_tokens = not azure_endpoint and not base_url

    async def aclose(self) -> None:
        await self._client.close()

    # -- one attempt -----------------------------------------------------------------
    async def _attempt(self, request: LLMRequest) -> ChatCompletion:
        body: dict[str, object] = {
            "model": self._model,
            "messages": [_message_param(m) for m in request.messages],
            "temperature": request.temperature,
            "max_completion_tokens" if self._use_max_completion_tokens else "max_tokens": (
                request.max_tokens
            ),
        }
        if request.json_mode:
            body["response_format"] = {"type": "json_object"}
        try:
            async with asyncio.timeout(self._timeout_s):
                # The SDK's own POST of the chat completions endpoint (the same request
                # `chat.completions.create` sends, Azure's deployment routing included),
                # minus its walk of typed parameters: for a body of plain JSON values that
                # walk changes nothing and cost about 1 ms of event-loop time per call,
                # measured, paid 16 times in a row when 16 tasks start together.
                return await self._client.post(
                    "/chat/completions",
                    cast_to=ChatCompletion,
                    body=body,
                    options={"timeout": self._timeout_s},
                )
        except TimeoutError:
            raise self._timed_out() from None
        except openai.APITimeoutError:
            raise self._timed_out() from None
        except openai.APIStatusError as exc:
            raise failure_from_status(
                exc.status_code,
                exc.response.headers,
                exc.body,
                exc.message,
                secrets=self._secrets,
            ) from None
        except openai.APIConnectionError as exc:
            raise self._unreachable(exc) from None
        except json.JSONDecodeError as exc:
            raise self._not_json(exc) from None
        except openai.APIResponseValidationError as exc:
            raise self._bad_shape(exc.message) from None
        except (openai.OpenAIError, ValueError) as exc:
            raise self._refused(exc) from None

    def _response(
        self, request: LLMRequest, completion: ChatCompletion, attempts: int, latency_s: float
    ) -> LLMResponse:
        if not completion.choices:
            raise LLMError(f"{self._provider} ({self._model}) returned no choices")
        choice = completion.choices[0]
        content = choice.message.content or ""
        if not content and choice.message.refusal:
            content = choice.message.refusal
        estimated = completion.usage is None
        if completion.usage is not None:
            usage = Usage(
                input_tokens=completion.usage.prompt_tokens or 0,
                output_tokens=completion.usage.completion_tokens or 0,
            )
        else:
            # Some compatible servers omit usage; an estimate keeps budgets meaningful.
            prompt = "\n".join(m.content for m in request.messages)
            usage = Usage(
                input_tokens=estimate_tokens(prompt), output_tokens=estimate_tokens(content)
            )
        reported_model = completion.model or self._model
        return LLMResponse(
            content=content,
            provider=self._provider,
            model=reported_model,
            usage=usage,
            # Azure reports the real model, while self._model may be a deployment name.
            cost_usd=cost_for_any(usage, (reported_model, self._model), self._prices),
            latency_s=latency_s,
            attempts=attempts,
            finish_reason=choice.finish_reason,
            raw={"id": completion.id, "usage_estimated": estimated},
        )
