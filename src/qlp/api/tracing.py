"""OpenTelemetry tracing of HTTP requests, with the exporter chosen by QLP_TRACING:
azure (Application Insights, when APPLICATIONINSIGHTS_CONNECTION_STRING is set and QLP_TRACING
is auto), otlp (OTEL_EXPORTER_OTLP_ENDPOINT and the other standard OTEL_* variables),
console (spans printed as JSON, for trying it out), none."""

from __future__ import annotations

from fastapi import FastAPI
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

from qlp import __version__
from qlp.config import Settings


def exporter_kind(settings: Settings) -> str:
    if settings.tracing != "auto":
        return settings.tracing
    return "azure" if settings.applicationinsights_connection_string else "none"


def make_exporter(settings: Settings) -> SpanExporter | None:
    kind = exporter_kind(settings)
    if kind == "console":
        return ConsoleSpanExporter()
    if kind == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    if kind == "azure":
        from azure.monitor.opentelemetry.exporter import AzureMonitorTraceExporter

        secret = settings.applicationinsights_connection_string
        if secret is None:
            from qlp.errors import ConfigError

            raise ConfigError("QLP_TRACING=azure needs APPLICATIONINSIGHTS_CONNECTION_STRING")
        return AzureMonitorTraceExporter(connection_string=secret.get_secret_value())
    return None


def instrument(
    app: FastAPI, settings: Settings, exporter: SpanExporter | None = None
) -> TracerProvider | None:
    """Trace every request of `app`; returns the provider (shut down on exit) or None.
    `exporter` replaces the configured one (tests)."""
    exporter = exporter or make_exporter(settings)
    if exporter is None:
        return None
    provider = TracerProvider(
        resource=Resource.create({"service.name": "qlp", "service.version": __version__})
    )
    provider.add_span_processor(BatchSpanProcessor(exporter))
    FastAPIInstrumentor.instrument_app(
        app, tracer_provider=provider, excluded_urls="healthz,readyz,metrics"
    )
    return provider
