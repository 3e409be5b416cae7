"""The API reference at /docs, opened in a real Chromium as a new user would, with no internet.

Every request the page makes is recorded, and any that is not for the service is refused, as it
would be on a firewalled network: the page must work with what the service itself serves, under
its Content-Security-Policy. The test then goes through the first click-through that
docs/api-reference.md describes: "Authorize" with the API key, "Try it out" on `POST /tokens`,
"Try it out" on the multipart `POST /models/{token_id}/register` with a real file picked in the
form, and a reload that keeps the key. Screenshots of the page are saved in the test's temporary
folder, whether the test passes or fails, and listed in the run's summary.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.async_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Locator,
    Page,
    Route,
    expect,
)

from tests.browser.conftest import record_screenshot
from tests.cli.servers import LiveService
from tests.factories import pickle_bytes

pytestmark = pytest.mark.e2e

# Long enough for a cold MLflow store to take the first registration on a busy machine.
RESPONSE_TIMEOUT_MS = 90_000
CREATE_TOKEN = "operations-tokens-create_token_tokens_post"
GET_TOKEN = "operations-tokens-get_token_tokens__token_id__get"
REGISTER = "operations-registrations-register_model_models__token_id__register_post"

# Listens before any page script runs, so a violation during start-up is caught too.
RECORD_CSP_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (event) => {
  window.__cspViolations.push(`${event.violatedDirective} ${event.blockedURI}`);
});
"""


@dataclass
class Traffic:
    """What the page asked for: every request, those refused for leaving the service, and the
    browser's console errors."""

    origin: str
    requests: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    authorization: list[tuple[str, str | None]] = field(default_factory=list)


@dataclass
class Session:
    page: Page
    traffic: Traffic
    screenshot: Path


@pytest.fixture
async def session(
    browser: Browser, service: LiveService, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Session]:
    """A fresh browser profile on the service's /docs; the screenshot is taken on the way out."""
    traffic = Traffic(origin=service.url)
    context: BrowserContext = await browser.new_context(
        base_url=service.url, viewport={"width": 1280, "height": 1000}
    )
    context.set_default_timeout(30_000)
    await context.add_init_script(RECORD_CSP_VIOLATIONS)

    async def gatekeeper(route: Route) -> None:
        url = route.request.url
        traffic.requests.append(url)
        if _origin(url) != traffic.origin:
            traffic.foreign.append(url)
            await route.abort("blockedbyclient")
            return
        await route.continue_()

    await context.route("**/*", gatekeeper)
    page = await context.new_page()
    page.on("console", lambda message: _console(traffic, message))
    page.on("pageerror", lambda error: traffic.page_errors.append(str(error)))
    page.on(
        "request",
        lambda request: traffic.authorization.append(
            (request.url, request.headers.get("authorization"))
        ),
    )
    screenshot = tmp_path / "swagger-ui.png"
    try:
        yield Session(page=page, traffic=traffic, screenshot=screenshot)
    finally:
        # What was on screen last (where a failing step was), and the whole page.
        full = tmp_path / "swagger-ui-full.png"
        await page.screenshot(path=str(screenshot))
        await page.screenshot(path=str(full), full_page=True)
        for path in (screenshot, full):
            record_screenshot(request.config, path)
        print(f"screenshots of /docs: {screenshot} {full}")
        await context.close()


class TestTheReferenceWorksOffline:
    async def test_loads_only_from_the_service_under_its_policy(
        self, session: Session, service: LiveService
    ) -> None:
        page, traffic = session.page, session.traffic
        response = await page.goto("/docs")
        assert response is not None and response.status == 200
        policy = response.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "connect-src 'self'" in policy
        assert "unsafe" not in policy and "http" not in policy

        await expect(page.locator(f"#{REGISTER}")).to_be_visible()
        await expect(page.locator(".info .title")).to_contain_text(
            "Hokusai model registration service"
        )
        # The favicon is the service's own, and it is a real image.
        icon = page.locator("link[rel=icon]").first
        icon_url = await icon.evaluate("link => link.href")
        assert _origin(icon_url) == service.url
        favicon = httpx.get(icon_url, timeout=10)
        assert favicon.status_code == 200 and favicon.content.startswith(b"\x89PNG")

        assert traffic.foreign == []
        paths = {urlsplit(url).path for url in traffic.requests}
        assert {"/docs", "/openapi.json", "/docs/assets/swagger-ui-bundle.js"} <= paths
        assert await page.evaluate("window.__cspViolations") == []
        assert traffic.console_errors == [] and traffic.page_errors == []


class TestFirstClickThrough:
    async def test_authorize_create_a_token_register_a_file_and_reload(
        self,
        session: Session,
        service: LiveService,
        tmp_path: Path,
        request: pytest.FixtureRequest,
    ) -> None:
        page, traffic = session.page, session.traffic
        await page.goto("/docs")
        await expect(page.locator(f"#{REGISTER}")).to_be_visible()

        # Authorize with the API key (HTTP Bearer).
        await page.locator("button.authorize").first.click()
        dialog = page.locator(".modal-ux")
        bearer = dialog.locator(".auth-container").filter(has_text="HTTPBearer")
        await bearer.locator("#auth-bearer-value").fill(service.key)
        await bearer.get_by_role("button", name="Apply credentials").click()
        await expect(bearer).to_contain_text("Authorized")
        await expect(bearer.get_by_role("button", name="Remove authorization")).to_be_visible()
        await bearer.get_by_role("button", name="Close").click()
        await expect(dialog).to_be_hidden()

        # POST /tokens: the example body with a token id of our own, as docs/api-reference.md says.
        create = await _try_it_out(page, CREATE_TOKEN)
        editor = create.locator("textarea.body-param__text")
        body = json.loads(await editor.input_value())
        body["token_id"] = "docs-1"
        await editor.fill(json.dumps(body))
        status, created = await _execute(create)
        assert status == "201", created
        token = json.loads(created)
        assert token["token_id"] == "DOCS-1" and token["status"] == "draft"
        assert token["metric"] == body["metric"] and token["baseline"] == body["baseline"]

        # POST /models/{token_id}/register: the prefilled form, and a model file picked in it.
        model = tmp_path / "classifier.pkl"
        model.write_bytes(pickle_bytes(size=4096))
        register = await _try_it_out(page, REGISTER)
        await register.locator("tr[data-param-name='token_id'] input").fill("docs-1")
        form = register.locator(".opblock-section-request-body")
        await expect(_form_field(form, "metric")).to_have_value(token["metric"])
        await expect(_form_field(form, "baseline")).to_have_value(str(token["baseline"]))
        score = float(await _form_field(form, "metric_value").input_value())
        picker = form.locator("tr[data-property-name='model_file'] input[type=file]")
        await expect(picker).to_have_count(1)
        await picker.set_input_files(model)
        status, registered = await _execute(register)
        assert status == "201", registered
        registration = json.loads(registered)
        assert registration["status"] == "registered"
        assert registration["token_id"] == "DOCS-1"
        assert registration["model_name"] == "hokusai-DOCS-1"
        assert registration["metric"]["value"] == score and registration["metric"]["passed"]
        assert registration["artifact"]["filename"] == "classifier.pkl"
        assert registration["artifact"]["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
        headers = register.locator(".live-responses-table .headerline")
        await expect(headers.filter(has_text="location:")).to_have_text(
            f"location: /registrations/{registration['registration_id']}"
        )
        await register.locator(".live-responses-table").scroll_into_view_if_needed()
        await page.screenshot(path=str(tmp_path / "registered.png"))
        record_screenshot(request.config, tmp_path / "registered.png")

        # The service agrees: the token is registered, with the model version in MLflow.
        with service.client() as client:
            stored = client.get("/tokens/DOCS-1").json()
        assert stored["status"] == "registered"
        assert stored["model_version"] == registration["model_version"]
        assert service.mlflow_versions("hokusai-DOCS-1") == [registration["model_version"]]

        # Every API call the page made carried the key typed into "Authorize".
        paths = [(urlsplit(url).path, header) for url, header in traffic.authorization]
        sent = {
            path: header
            for path, header in paths
            if not path.startswith("/docs/") and path not in ("/docs", "/openapi.json")
        }
        assert sent == {
            "/tokens": f"Bearer {service.key}",
            "/models/docs-1/register": f"Bearer {service.key}",
        }

        # A reload keeps the key: a call made after it is authorized without typing it again.
        await page.reload()
        await expect(page.locator("button.authorize.locked").first).to_be_visible()
        read = await _try_it_out(page, GET_TOKEN)
        await read.locator("tr[data-param-name='token_id'] input").fill("DOCS-1")
        status, shown = await _execute(read)
        assert status == "200", shown
        assert json.loads(shown)["status"] == "registered"
        await read.locator(".live-responses-table").scroll_into_view_if_needed()

        assert traffic.foreign == []
        assert await page.evaluate("window.__cspViolations") == []
        assert traffic.page_errors == []


async def _try_it_out(page: Page, operation_id: str) -> Locator:
    """Open an operation and switch it to "Try it out"; returns the operation's block."""
    operation = page.locator(f"#{operation_id}")
    await operation.locator(".opblock-summary").first.click()
    await operation.get_by_role("button", name="Try it out").click()
    await expect(operation.get_by_role("button", name="Execute")).to_be_visible()
    return operation


def _form_field(form: Locator, name: str) -> Locator:
    return form.locator(f"tr[data-property-name='{name}'] input[type=text]")


async def _execute(operation: Locator) -> tuple[str, str]:
    """Click "Execute" and read the response Swagger UI shows: its status and its body."""
    await operation.get_by_role("button", name="Execute").click()
    live = operation.locator(".live-responses-table .response")
    await expect(live).to_be_visible(timeout=RESPONSE_TIMEOUT_MS)
    status = (await live.locator(".response-col_status").inner_text()).strip()
    body = await live.locator(".response-col_description pre").first.inner_text()
    return status, body


def _console(traffic: Traffic, message: ConsoleMessage) -> None:
    if message.type == "error":
        traffic.console_errors.append(message.text)


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"
