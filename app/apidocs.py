"""The interactive API reference at /docs: Swagger UI served entirely by the service.

FastAPI's own page loads Swagger UI from a public CDN, so on a network without internet it is a
blank page. Here the page, its script, its styles and its favicon all come from this process:
Swagger UI's files from the installed `swagger-ui-bundle-v2` package (pinned in uv.lock), and its
configuration from app/static/swagger-init.js. The page carries no inline script, so
its Content-Security-Policy lets nothing run or load from anywhere but the service itself.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse
from starlette.exceptions import HTTPException
from swagger_ui_bundle import swagger_ui_path

DOCS_PATH = "/docs"
ASSETS_PATH = f"{DOCS_PATH}/assets"

# The folder is named after the Swagger UI release it holds (`swagger-ui-5.31.0`).
SWAGGER_UI_VERSION = Path(str(swagger_ui_path)).name.removeprefix("swagger-ui-")

# Every directive closed by default: the page runs only the service's own scripts and talks only
# to the service. `data:` images are the icons inside swagger-ui.css; `blob:` ones are image
# responses shown by "Try it out".
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data: blob:",
        "font-src 'self'",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)
_PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}
_ASSET_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    # Links carry `?v=<version>`, so a new Swagger UI release is fetched afresh.
    "Cache-Control": "public, max-age=86400",
}

# Swagger UI's options (https://swagger.io/docs/open-source-tools/swagger-ui/usage/configuration/)
# as the JSON block of the page hands them to swagger-init.js.
SWAGGER_UI_OPTIONS: dict[str, Any] = {
    "dom_id": "#swagger-ui",
    # The standalone layout's top bar would load any URL typed into it; this page shows one API.
    "layout": "BaseLayout",
    "deepLinking": True,
    # The key typed into "Authorize" is kept in this browser's localStorage across reloads.
    "persistAuthorization": True,
    "displayRequestDuration": True,
    "showExtensions": True,
    "showCommonExtensions": True,
    # No spec is sent to the public validator.
    "validatorUrl": None,
}


@dataclass(frozen=True)
class _Asset:
    path: Path
    media_type: str


_ASSETS: dict[str, _Asset] = {
    "swagger-ui-bundle.js": _Asset(
        Path(str(swagger_ui_path / "swagger-ui-bundle.js")), "text/javascript; charset=utf-8"
    ),
    "swagger-ui.css": _Asset(Path(str(swagger_ui_path / "swagger-ui.css")), "text/css"),
    "favicon-32x32.png": _Asset(Path(str(swagger_ui_path / "favicon-32x32.png")), "image/png"),
    "favicon-16x16.png": _Asset(Path(str(swagger_ui_path / "favicon-16x16.png")), "image/png"),
    "swagger-init.js": _Asset(
        Path(__file__).parent / "static" / "swagger-init.js", "text/javascript; charset=utf-8"
    ),
}

router = APIRouter(include_in_schema=False)


@router.api_route(DOCS_PATH, methods=["GET", "HEAD"])
async def swagger_ui(request: Request) -> HTMLResponse:
    """The Swagger UI page."""
    root = str(request.scope.get("root_path", "")).rstrip("/")
    openapi_url = request.app.openapi_url or "/openapi.json"
    options = {**SWAGGER_UI_OPTIONS, "url": f"{root}{openapi_url}"}
    return HTMLResponse(
        render_page(title=request.app.title, root=root, options=options), headers=_PAGE_HEADERS
    )


@router.api_route(f"{ASSETS_PATH}/{{name}}", methods=["GET", "HEAD"])
async def swagger_ui_asset(name: str) -> FileResponse:
    """One of the page's files; the name is looked up, never used as a path."""
    asset = _ASSETS.get(name)
    if asset is None:
        raise HTTPException(status_code=404, detail=f"no docs asset {name[:64]!r}")
    return FileResponse(asset.path, media_type=asset.media_type, headers=_ASSET_HEADERS)


def render_page(*, title: str, root: str, options: dict[str, Any]) -> str:
    """The page's HTML: Swagger UI's files under `root`, started with `options`."""

    def asset(name: str) -> str:
        return html.escape(f"{root}{ASSETS_PATH}/{name}?v={SWAGGER_UI_VERSION}")

    # A JSON data block is not executed, so the policy needs no hash for it. Escaping `<`, `>`
    # and `&` keeps any value from closing the element early.
    config = (
        json.dumps(options, separators=(",", ":"))
        .replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)} - API reference</title>
<link rel="stylesheet" href="{asset("swagger-ui.css")}">
<link rel="icon" type="image/png" sizes="32x32" href="{asset("favicon-32x32.png")}">
<link rel="icon" type="image/png" sizes="16x16" href="{asset("favicon-16x16.png")}">
</head>
<body>
<div id="swagger-ui"></div>
<script id="swagger-ui-options" type="application/json">{config}</script>
<script src="{asset("swagger-ui-bundle.js")}"></script>
<script src="{asset("swagger-init.js")}"></script>
</body>
</html>
"""
