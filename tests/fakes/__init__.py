"""Test doubles that run for real: the fake LLM server speaks HTTP on 127.0.0.1."""

from tests.fakes.llm_server import FakeLLMServer, RecordedRequest

__all__ = ["FakeLLMServer", "RecordedRequest"]
