"""The /docs page and its files, in process: everything comes from the service, the page has no
inline script, and its Content-Security-Policy closes every other source. tests/browser opens the
same page in a real Chromium."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.apidocs import SWAGGER_UI_VERSION, render_page
from app.main import create_app
from tests.support.service import make_settings


class _Elements(HTMLParser):
    """Every start tag of a page, with its attributes, and the text inside each script."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag == "script":
            self._in_script = True
            self.scripts.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.scripts[-1] += data


def parse(page: str) -> _Elements:
    elements = _Elements()
    elements.feed(page)
    return elements


def directives(policy: str) -> dict[str, list[str]]:
    parsed = {}
    for directive in policy.split(";"):
        name, *sources = directive.split()
        parsed[name] = sources
    return parsed


@pytest.fixture(scope="module")
async def client(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[httpx.AsyncClient]:
    """The app without its lifespan: the docs touch no database or MLflow."""
    data_dir = tmp_path_factory.mktemp("apidocs")
    app = create_app(make_settings(data_dir, f"sqlite:///{data_dir / 'x.db'}", data_dir / "ml"))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://docs.test") as client:
        yield client


class TestPage:
    async def test_is_served_with_a_strict_content_security_policy(
        self, client: httpx.AsyncClient
    ) -> None:
        response = await client.get("/docs")
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/html; charset=utf-8"
        policy = directives(response.headers["content-security-policy"])
        assert policy["default-src"] == ["'none'"]
        assert policy["script-src"] == ["'self'"]
        assert policy["style-src"] == ["'self'"]
        assert policy["connect-src"] == ["'self'"]
        assert policy["img-src"] == ["'self'", "data:", "blob:"]
        assert policy["frame-ancestors"] == ["'none'"]
        assert policy["base-uri"] == ["'none'"]
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "no-referrer"

    async def test_names_no_other_host_and_runs_no_inline_script(
        self, client: httpx.AsyncClient
    ) -> None:
        page = (await client.get("/docs")).text
        assert not re.search(r"(https?:)?//", page), "the page refers to another host"
        elements = parse(page)
        scripts = [attrs for tag, attrs in elements.tags if tag == "script"]
        for attrs, text in zip(scripts, elements.scripts, strict=True):
            # A script either comes from the service, or is data that no browser runs.
            assert ("src" in attrs and not text.strip()) or attrs["type"] == "application/json"
        assert [attrs["src"] for attrs in scripts if "src" in attrs] == [
            f"/docs/assets/swagger-ui-bundle.js?v={SWAGGER_UI_VERSION}",
            f"/docs/assets/swagger-init.js?v={SWAGGER_UI_VERSION}",
        ]

    async def test_hands_swagger_ui_its_options_as_data(self, client: httpx.AsyncClient) -> None:
        elements = parse((await client.get("/docs")).text)
        scripts = [attrs for tag, attrs in elements.tags if tag == "script"]
        (block,) = [
            text
            for attrs, text in zip(scripts, elements.scripts, strict=True)
            if attrs.get("id") == "swagger-ui-options"
        ]
        options = json.loads(block)
        assert options["url"] == "/openapi.json"
        assert options["persistAuthorization"] is True
        assert options["validatorUrl"] is None
        assert options["layout"] == "BaseLayout"
        assert options["dom_id"] == "#swagger-ui"

    async def test_answers_head(self, client: httpx.AsyncClient) -> None:
        response = await client.head("/docs")
        assert response.status_code == 200
        assert "content-security-policy" in response.headers

    async def test_prefixes_every_link_with_the_root_path(self, tmp_path: Path) -> None:
        app = create_app(make_settings(tmp_path, f"sqlite:///{tmp_path / 'x.db'}", tmp_path))
        transport = httpx.ASGITransport(app=app, root_path="/registry")
        async with httpx.AsyncClient(transport=transport, base_url="http://docs.test") as client:
            response = await client.get("/docs")
        assert response.status_code == 200
        elements = parse(response.text)
        links = [
            attrs.get("src") or attrs.get("href")
            for tag, attrs in elements.tags
            if tag in ("script", "link") and (attrs.get("src") or attrs.get("href"))
        ]
        assert links and all(str(link).startswith("/registry/docs/assets/") for link in links)
        assert '"url":"/registry/openapi.json"' in response.text


class TestAssets:
    @pytest.mark.parametrize(
        ("name", "media_type", "starts_with"),
        [
            ("swagger-ui-bundle.js", "text/javascript; charset=utf-8", b""),
            ("swagger-init.js", "text/javascript; charset=utf-8", b"//"),
            ("swagger-ui.css", "text/css; charset=utf-8", b""),
            ("favicon-32x32.png", "image/png", b"\x89PNG"),
            ("favicon-16x16.png", "image/png", b"\x89PNG"),
        ],
    )
    async def test_every_file_the_page_uses_is_served(
        self, client: httpx.AsyncClient, name: str, media_type: str, starts_with: bytes
    ) -> None:
        response = await client.get(f"/docs/assets/{name}", params={"v": SWAGGER_UI_VERSION})
        assert response.status_code == 200
        assert response.headers["content-type"] == media_type
        assert response.headers["x-content-type-options"] == "nosniff"
        assert "max-age" in response.headers["cache-control"]
        assert response.content.startswith(starts_with) and len(response.content) > 100

    async def test_the_bundle_is_swagger_ui_of_the_pinned_release(
        self, client: httpx.AsyncClient
    ) -> None:
        bundle = (await client.get("/docs/assets/swagger-ui-bundle.js")).text
        assert "SwaggerUIBundle" in bundle
        assert re.fullmatch(r"5\.\d+\.\d+", SWAGGER_UI_VERSION)

    @pytest.mark.parametrize(
        "name", ["index.html", "swagger-ui.js.map", "..%2Fapidocs.py", "%2Fetc%2Fpasswd", "x" * 300]
    )
    async def test_anything_else_is_a_problem_404(
        self, client: httpx.AsyncClient, name: str
    ) -> None:
        response = await client.get(f"/docs/assets/{name}")
        assert response.status_code == 404
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["code"] == "not_found"

    @pytest.mark.parametrize("path", ["/redoc", "/docs/oauth2-redirect"])
    async def test_fastapis_cdn_pages_are_gone(self, client: httpx.AsyncClient, path: str) -> None:
        assert (await client.get(path)).status_code == 404

    async def test_the_docs_routes_stay_out_of_the_api_reference(
        self, client: httpx.AsyncClient
    ) -> None:
        spec = (await client.get("/openapi.json")).json()
        assert not [path for path in spec["paths"] if path.startswith("/docs")]


class TestPageEscaping:
    def test_a_value_cannot_close_the_options_block(self) -> None:
        hostile: dict[str, Any] = {"url": "/x</script><script>alert(1)</script>&"}
        page = render_page(title="<b>API</b>", root="", options=hostile)
        elements = parse(page)
        assert [tag for tag, _ in elements.tags].count("script") == 3
        assert "<b>" not in page and "alert(1)</script>" not in page
        block = next(text for text in elements.scripts if text.startswith("{"))
        assert json.loads(block) == hostile
