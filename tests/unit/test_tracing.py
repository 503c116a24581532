from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace.export import ConsoleSpanExporter
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from qlp.api.tracing import exporter_kind, instrument, make_exporter
from qlp.config import Settings


def _settings(tmp_path: Path, **values: object) -> Settings:
    return Settings(home=tmp_path, **values)  # type: ignore[arg-type]


def test_auto_picks_azure_only_with_a_connection_string(tmp_path: Path) -> None:
    assert exporter_kind(_settings(tmp_path)) == "none"
    conn = "InstrumentationKey=00000000-0000-0000-0000-000000000000;IngestionEndpoint=https://127.0.0.1/"
    with_conn = _settings(tmp_path, applicationinsights_connection_string=conn)
    assert exporter_kind(with_conn) == "azure"
    assert (
        exporter_kind(
            _settings(tmp_path, tracing="none", applicationinsights_connection_string=conn)
        )
        == "none"
    )
    assert type(make_exporter(with_conn)).__name__ == "AzureMonitorTraceExporter"
    assert make_exporter(_settings(tmp_path)) is None


def test_each_request_becomes_a_span_with_its_route(tmp_path: Path) -> None:
    app = FastAPI()

    @app.get("/api/v1/items/{item_id}")
    async def item(item_id: str) -> dict[str, str]:
        return {"id": item_id}

    assert isinstance(make_exporter(_settings(tmp_path, tracing="console")), ConsoleSpanExporter)
    spans = InMemorySpanExporter()
    provider = instrument(app, _settings(tmp_path, tracing="console"), exporter=spans)
    assert provider is not None
    with TestClient(app) as client:
        assert client.get("/api/v1/items/42").status_code == 200
    provider.shutdown()  # flushes the batch
    routes = {s.attributes.get("http.route") for s in spans.get_finished_spans() if s.attributes}
    assert "/api/v1/items/{item_id}" in routes
