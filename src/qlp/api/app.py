"""The FastAPI application: routes under /api/v1, OpenAPI at /docs, the service opened and
closed with the app (database, runner, auth), middlewares for limits and request context."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager

import structlog
from fastapi import FastAPI

from qlp import __version__
from qlp.api import docs, openapi, problems
from qlp.api.context import Service
from qlp.api.inputs import RefuseUnstorableUrls
from qlp.api.limits import BodySizeLimit, RateLimits
from qlp.api.metrics import Metrics
from qlp.api.middleware import RequestContext
from qlp.api.refusals import RefusalTally
from qlp.api.routes import auth, capsules, intents, stream, system
from qlp.api.tracing import instrument
from qlp.capsule.keys import public_key_pem, public_key_text
from qlp.config import Settings
from qlp.engine.relay import EventRelay
from qlp.engine.runner import IntentRunner
from qlp.engine.wiring import make_auth, make_capsule_store, open_runtime, signing_key
from qlp.errors import QLPError
from qlp.periodic import cancelled, every
from qlp.scratch import Scratch
from qlp.store.audit import AuditStore
from qlp.store.counters import RateCounters
from qlp.store.intent_queries import IntentQueries
from qlp.store.reviews import ReviewStore

API_PREFIX = "/api/v1"
log = structlog.get_logger("qlp.api")

DESCRIPTION = """Turn an intent into a tested, scanned and signed QuantumCapsule.

Authenticate with `POST /api/v1/auth/login` and send `Authorization: Bearer <access_token>`
(or an API key) on every other request. Errors are `application/problem+json` (RFC 9457)
with a stable `code`. See docs/API.md."""


# How often old rate-limit windows are deleted (any API process may do it).
COUNTER_PRUNE_S = 60.0
# How often the refusal counts of finished minutes are written to the audit log.
REFUSALS_FLUSH_S = 5.0


def create_app(
    settings: Settings,
    *,
    worker: bool = True,
    on_startup_error: Callable[[QLPError], None] | None = None,
) -> FastAPI:
    """The app; its lifespan opens the service (with a worker running intents, unless
    `worker` is False: an API replica). A QLPError while opening it (database
    unreachable, a bad setting) goes to `on_startup_error` when given (the server then stops
    and reports it in one line) instead of failing the lifespan with a traceback."""
    metrics = Metrics()

    async def open_service(app: FastAPI, stack: AsyncExitStack) -> None:
        rt = await stack.enter_async_context(open_runtime(settings))
        pipeline = rt.pipeline(need_llm=False, sandbox_observer=metrics.observe_sandbox)
        runner = IntentRunner(
            pipeline,
            rt.database_url,
            max_running=settings.server_max_running,
            max_active_per_user=settings.user_max_active_intents,
            work=worker,
            queue=settings.job_queue,
            stall_s=settings.worker_stall_s,
        )
        key = signing_key(settings)
        # Removes what a crashed server left in QLP_HOME/tmp, then holds this one's folder.
        scratch = Scratch(settings.home / "tmp")
        swept = await asyncio.to_thread(scratch.open)
        stack.callback(scratch.close)
        if swept:
            log.info("api.scratch_swept", removed=len(swept))
        audit = AuditStore(rt.store)
        counters = RateCounters(rt.store)
        pruner = asyncio.create_task(every(COUNTER_PRUNE_S, counters.prune))
        stack.push_async_callback(cancelled, pruner)
        refusals = RefusalTally(audit)
        stack.push_async_callback(refusals.flush, everything=True)  # after the flusher stops
        flusher = asyncio.create_task(every(REFUSALS_FLUSH_S, refusals.flush))
        stack.push_async_callback(cancelled, flusher)
        app.state.service = Service(
            settings=settings,
            runtime=rt,
            runner=runner,
            auth=make_auth(settings, rt.store),
            audit=audit,
            queries=IntentQueries(rt.store),
            reviews=ReviewStore(rt.store),
            capsules=make_capsule_store(settings),
            blobs=pipeline.blobs,
            limits=RateLimits(
                counters,
                login_per_minute=settings.login_rate_per_minute,
                submit_per_minute=settings.submit_rate_per_minute,
            ),
            refusals=refusals,
            metrics=metrics,
            public_key=public_key_text(key),
            public_key_pem=public_key_pem(key),
            scratch=scratch,
        )
        # Events committed by other processes (workers, other servers, `qlp run`) reach this
        # one's WebSocket subscribers through it.
        relay = EventRelay(rt.store, rt.bus)
        await relay.start()
        stack.push_async_callback(relay.stop)
        events = rt.bus.subscribe()
        follower = asyncio.create_task(metrics.follow(events))

        async def close() -> None:
            await runner.stop()
            rt.bus.unsubscribe(events)
            await cancelled(follower)

        stack.push_async_callback(close)
        await runner.start()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            try:
                await open_service(app, stack)
            except QLPError as exc:
                if on_startup_error is None:
                    raise
                await stack.aclose()
                on_startup_error(exc)
            try:
                yield
            finally:
                if tracer is not None:
                    tracer.shutdown()

    app = FastAPI(
        title="QLP",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # docs.install serves /docs with local Swagger UI assets
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    problems.install(app)
    for router in (auth.router, intents.router, stream.router, capsules.router, system.router):
        app.include_router(router, prefix=API_PREFIX)
    openapi.install(app, API_PREFIX)
    docs.install(app)
    app.add_middleware(
        BodySizeLimit,
        limit=settings.max_body_bytes,
        overrides={"/capsules/verify": settings.max_upload_bytes},
    )
    app.add_middleware(RefuseUnstorableUrls)
    app.add_middleware(RequestContext, metrics=metrics)
    tracer = instrument(app, settings)
    return app
