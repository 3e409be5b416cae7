"""Schema-driven fuzzing of the whole API, in process, on SQLite.

Schemathesis generates requests from the app's own OpenAPI document (valid ones and deliberately
invalid ones) and sends them with an admin key. Every answer must be a documented status code with
the documented content type and body schema, and never a 5xx. The run is bounded and seeded, so it
is repeatable and stays well under a minute.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.python.asgi import shutdown_lifespans
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.auth.service import create_api_key
from app.db import Database
from app.main import create_app
from app.manage import migrate
from tests.support.service import make_settings

if TYPE_CHECKING:
    from schemathesis.specs.openapi.schemas import OpenApiCase

pytestmark = pytest.mark.timeout(180)

MAX_EXAMPLES = 20
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]


@dataclass
class FuzzRun:
    admin_key: str = ""
    cases: int = 0
    by_operation: dict[str, int] = field(default_factory=dict)


def _create_admin_key(database_url: str) -> str:
    """An admin key made through the service's own function, in a loop of its own."""

    async def create() -> str:
        database = Database(database_url)
        try:
            async with database.transaction() as session:
                _, key = await create_api_key(session, name="fuzz", scopes=["admin"])
        finally:
            await database.dispose()
        return key

    result: list[str] = []
    # pytest-asyncio owns this thread's loop; a thread of our own keeps the two apart.
    worker = threading.Thread(target=lambda: result.append(asyncio.run(create())))
    worker.start()
    worker.join()
    assert result, "creating the admin key failed"
    return result[0]


# The app is built at import (cheap: no database is touched before its lifespan starts), because
# schemathesis needs the schema when the test is collected. Its lazy `from_fixture` loader does not
# work with this pytest version. The lifespan starts with the first fuzzed request, after the
# fixture below has migrated the database; schemathesis runs it in its own event loop thread.
# Named now, made only when the test runs, so collecting this file leaves nothing behind.
_DATA_DIR = Path(tempfile.gettempdir()) / f"hokusai-fuzz-{uuid.uuid4().hex}"
_DATABASE_URL = f"sqlite:///{_DATA_DIR / 'hokusai.db'}"
_APP = create_app(
    make_settings(_DATA_DIR, _DATABASE_URL, _DATA_DIR / "mlflow", auth_failure_limit=1_000_000)
)
schema = schemathesis.openapi.from_dict(_APP.openapi())
schema.app = _APP
schema.location = "/openapi.json"
_RUN = FuzzRun()


@pytest.fixture(scope="module")
def fuzz_run(request: pytest.FixtureRequest) -> Iterator[FuzzRun]:
    _DATA_DIR.mkdir(parents=True)
    migrate(_DATABASE_URL)
    _RUN.admin_key = _create_admin_key(_DATABASE_URL)
    started = time.perf_counter()
    try:
        yield _RUN
    finally:
        shutdown_lifespans()
        shutil.rmtree(_DATA_DIR, ignore_errors=True)
    elapsed = time.perf_counter() - started
    summary = f"fuzz: {_RUN.cases} cases over {len(_RUN.by_operation)} operations in {elapsed:.1f}s"
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture is not None else nullcontext():
        print(f"\n{summary}")
    assert _RUN.cases >= len(_RUN.by_operation) * 5, summary


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_api_conforms_to_its_schema(case: OpenApiCase, fuzz_run: FuzzRun) -> None:
    run = fuzz_run
    if case.query and "wait" in case.query and case.operation.path == "/events":
        # A long poll on an empty feed only waits; it tells the fuzz nothing new.
        case.query["wait"] = 0
    case.call_and_validate(headers={"Authorization": f"Bearer {run.admin_key}"}, checks=CHECKS)
    run.cases += 1
    label = case.operation.label
    run.by_operation[label] = run.by_operation.get(label, 0) + 1
