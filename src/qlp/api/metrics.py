"""Prometheus metrics of one server process, in a registry of its own (so two apps in one
process, as in the tests, never share counters).

HTTP metrics come from the request middleware, task and LLM metrics from the committed event
stream, sandbox metrics from an observer around the sandbox, and gauges (intents by state,
queue depth) are read when /metrics is scraped.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from datetime import datetime

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)

from qlp.domain import events as ev
from qlp.domain.events import Event
from qlp.domain.ids import TASK_PREFIX
from qlp.sandbox.base import ExecResult

_TYPE_OF_PREFIX = {prefix: task_type.value for task_type, prefix in TASK_PREFIX.items()}
_TASK_ENDS = {ev.TASK_SUCCEEDED: "succeeded", ev.TASK_FAILED: "failed"}

CONTENT_TYPE = CONTENT_TYPE_LATEST


def _task_type(task_id: str) -> str:
    parts = task_id.split("-")
    return _TYPE_OF_PREFIX.get(parts[1], "unknown") if len(parts) == 3 else "unknown"


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.http_requests = Counter(
            "qlp_http_requests", "HTTP requests", ["method", "route", "status"], registry=r
        )
        self.http_latency = Histogram(
            "qlp_http_request_duration_seconds",
            "HTTP request latency",
            ["method", "route"],
            registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.intents = Gauge("qlp_intents", "Intents by state", ["state"], registry=r)
        self.queue_depth = Gauge("qlp_queue_depth", "Intents waiting to run", registry=r)
        self.running = Gauge("qlp_running_intents", "Intents running now", registry=r)
        self.task_duration = Histogram(
            "qlp_task_duration_seconds",
            "Task run time from start to its end",
            ["type", "outcome"],
            registry=r,
            buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800),
        )
        self.llm_tokens = Counter(
            "qlp_llm_tokens", "LLM tokens", ["model", "direction"], registry=r
        )
        self.llm_cost = Counter(
            "qlp_llm_cost_usd", "LLM cost of calls with a known price", ["model"], registry=r
        )
        self.llm_calls = Counter("qlp_llm_calls", "LLM calls", ["model", "outcome"], registry=r)
        self.sandbox_runs = Counter(
            "qlp_sandbox_runs", "Sandboxed commands", ["backend", "outcome"], registry=r
        )
        self.sandbox_kills = Counter(
            "qlp_sandbox_kills", "Sandboxed commands killed", ["backend", "reason"], registry=r
        )
        self.websockets = Gauge("qlp_websocket_streams", "Open event streams", registry=r)
        # Which API process answered (`qlp serve --workers N` runs several on one port, each
        # with metrics of its own).
        Info("qlp_process", "The API process serving this scrape", registry=r).info(
            {"pid": str(os.getpid())}
        )
        self._started: dict[tuple[str, str], datetime] = {}

    def render(self) -> bytes:
        return generate_latest(self.registry)

    # -- from the event stream ------------------------------------------------------------
    def observe_events(self, events: list[Event]) -> None:
        for e in events:
            if e.type == ev.LLM_USAGE:
                model = str(e.payload.get("model", "unknown"))
                self.llm_tokens.labels(model, "input").inc(int(e.payload.get("input_tokens", 0)))
                self.llm_tokens.labels(model, "output").inc(int(e.payload.get("output_tokens", 0)))
                cost = e.payload.get("cost_usd")
                if isinstance(cost, int | float):
                    self.llm_cost.labels(model).inc(float(cost))
                self.llm_calls.labels(model, "ok" if e.payload.get("ok") else "error").inc()
            elif e.type == ev.TASK_STARTED:
                self._started[(e.intent_id, str(e.payload.get("task_id")))] = e.at
            elif e.type in _TASK_ENDS:
                task_id = str(e.payload.get("task_id"))
                began = self._started.pop((e.intent_id, task_id), None)
                if began is not None:
                    seconds = max(0.0, (e.at - began).total_seconds())
                    self.task_duration.labels(_task_type(task_id), _TASK_ENDS[e.type]).observe(
                        seconds
                    )
            elif e.type in (ev.INTENT_COMPLETED, ev.INTENT_FAILED, ev.INTENT_CANCELLED):
                for key in [k for k in self._started if k[0] == e.intent_id]:
                    del self._started[key]

    async def follow(self, queue: asyncio.Queue[Event]) -> None:
        """Consume a bus subscription until cancelled."""
        with contextlib.suppress(asyncio.CancelledError):
            while True:
                self.observe_events([await queue.get()])

    # -- from the sandbox -----------------------------------------------------------------
    def observe_sandbox(self, backend: str, result: ExecResult) -> None:
        self.sandbox_runs.labels(backend, "ok" if result.ok else "error").inc()
        if result.killed_reason is not None:
            self.sandbox_kills.labels(backend, result.killed_reason.value).inc()
