"""The interactive API docs at /docs, with Swagger UI served by this app (from the
`fastapi-offline` wheel's copy), so they work without internet access and load nothing from
another host."""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse

from qlp.errors import NotFoundError

ASSETS_PATH = "/docs/assets"
_STATIC = Path(fastapi_offline.__file__).resolve().parent / "static"
_ASSETS = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "favicon.png": "image/png",
}


def install(app: FastAPI, *, docs_url: str = "/docs", openapi_url: str = "/openapi.json") -> None:
    @app.get(docs_url, include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{app.title} - API docs",
            swagger_js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_PATH}/favicon.png",
            # Swagger UI would otherwise send the document to swagger.io's online validator.
            swagger_ui_parameters={"validatorUrl": None},
        )

    @app.get(ASSETS_PATH + "/{name}", include_in_schema=False)
    async def swagger_asset(name: str) -> FileResponse:
        media_type = _ASSETS.get(name)
        if media_type is None:
            raise NotFoundError(f"no docs asset named {name!r}")
        return FileResponse(
            _STATIC / name,
            media_type=media_type,
            headers={"Cache-Control": "public, max-age=86400"},
        )
