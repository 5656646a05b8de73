"""The interactive API docs (Swagger UI at /docs, ReDoc at /redoc) served from assets installed with the project.

FastAPI's own pages load their scripts and styles from a CDN, so on a city
intranet, a field laptop or an air-gapped server they are blank. The assets
come from the `fastapi-offline` package (Swagger UI and the ReDoc standalone
bundle), mounted under /docs-assets; nothing on either page leaves the host:
no web fonts, no favicon from elsewhere, no online spec validator.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.middleware.gzip import GZipMiddleware
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS_URL = "/docs-assets"
ASSETS = ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "favicon.png")
# Nothing on a docs page may come from elsewhere. ReDoc's sidebar links a logo on its vendor's CDN and Swagger UI
# would ask an online validator for a badge: the policy stops such requests in the browser, before they leave.
# 'unsafe-inline': Swagger UI starts from an inline script, and both inject their styles at run time; blob: for
# ReDoc's search worker.
CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:; frame-ancestors 'self'; base-uri 'self'; form-action 'self'")


def assets_dir() -> Path:
    """Where the installed package keeps Swagger UI and ReDoc; fails loudly if a file is missing."""
    path = Path(str(files("fastapi_offline") / "static"))
    missing = [a for a in ASSETS if not (path / a).is_file()]
    if missing:
        raise RuntimeError(f"the API docs assets are missing from {path}: {', '.join(missing)}; reinstall fastapi-offline")
    return path


def install(app: FastAPI, docs_url: str = "/docs", redoc_url: str = "/redoc") -> None:
    """Serve the docs pages on `app` (created with docs_url=None and redoc_url=None)."""
    # gzip here only (the API's own answers are left alone): 2.8 MB of scripts become about 0.8 MB on a slow field link
    app.mount(ASSETS_URL, GZipMiddleware(StaticFiles(directory=assets_dir()), minimum_size=1024), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"
    oauth2_redirect = app.swagger_ui_oauth2_redirect_url or "/docs/oauth2-redirect"

    @app.get(docs_url, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return _with_policy(get_swagger_ui_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=f"{root}{oauth2_redirect}",
            swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            # validatorUrl none: Swagger UI would otherwise send the spec to an online validator for its badge
            swagger_ui_parameters={"validatorUrl": None, **(app.swagger_ui_parameters or {})},
        ))

    @app.get(oauth2_redirect, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get(redoc_url, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return _with_policy(get_redoc_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            with_google_fonts=False,
        ))


def _with_policy(page: HTMLResponse) -> HTMLResponse:
    page.headers["Content-Security-Policy"] = CSP
    page.headers["X-Content-Type-Options"] = "nosniff"
    return page
