"""The OpenAPI document, completed with what FastAPI cannot infer: every error is a
problem+json body (FastAPI would document only its own 422 shape, as application/json),
and which operations need a bearer credential."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from qlp.api.schemas import FieldError, ProblemOut

# Operations anyone may call (everything else needs `Authorization: Bearer`).
PUBLIC = {"/healthz", "/readyz", "/metrics", "/auth/login", "/auth/refresh"}
# ... of which these check credentials in the body (a wrong one is a 401).
_CREDENTIALS = {"/auth/login", "/auth/refresh"}
_ERRORS = {
    "400": "The request is understood but wrong",
    "401": "No, wrong, expired or revoked credentials",
    "403": "Not allowed for this role",
    "404": "No such thing, or not yours",
    "409": "The current state does not allow it",
    "413": "Request body too large",
    "422": "The body or a parameter does not match the schema",
    "429": "Rate or quota limit; see Retry-After",
    "500": "A defect; the request id finds it in the log",
    "503": "Not configured or a dependency is down",
}
_PUBLIC_ERRORS = {"400", "413", "422", "429", "500", "503"}
_PROBLEM = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}


def install(app: FastAPI, prefix: str) -> None:
    def build() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        components = schema.setdefault("components", {})
        schemas = components.setdefault("schemas", {})
        schemas["FieldError"] = FieldError.model_json_schema()
        problem = ProblemOut.model_json_schema(ref_template="#/components/schemas/{model}")
        problem.pop("$defs", None)
        schemas["Problem"] = problem
        for unused in ("HTTPValidationError", "ValidationError"):
            schemas.pop(unused, None)
        components["securitySchemes"] = {
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "An access token from /auth/login, or an API key (qlk_...)",
            }
        }
        for path, item in schema.get("paths", {}).items():
            route = path.removeprefix(prefix)
            public = route in PUBLIC
            allowed = _PUBLIC_ERRORS | ({"401"} if route in _CREDENTIALS else set())
            for operation in item.values():
                responses = operation.setdefault("responses", {})
                for status, description in _ERRORS.items():
                    if public and status not in allowed:
                        continue
                    if status in responses and status != "422":
                        continue  # documented by the route itself (e.g. /readyz's 503)
                    responses[status] = {"description": description, "content": _PROBLEM}
                if not public:
                    operation["security"] = [{"bearer": []}]
        app.openapi_schema = schema
        return schema

    app.openapi = build  # type: ignore[method-assign]
