"""A token's sealed benchmark versions: storing a new one (PUT) and reading the latest (GET)."""

from __future__ import annotations

import uuid
from pathlib import Path

import anyio
import structlog
from sqlalchemy.exc import IntegrityError
from starlette.requests import Request

from app.config import Settings
from app.db import Database, utcnow
from app.errors import BenchmarkNotFound, RegistrationInProgress, TokenNotFound
from app.evaluation import benchmarks, repository
from app.evaluation.models import Benchmark
from app.evaluation.schemas import BenchmarkPublic
from app.registration.upload import UploadLimits
from app.scoring.registry import MetricSpec
from app.tokens import repository as tokens
from app.tokens.schemas import normalize_token_id

log = structlog.get_logger(__name__)


async def put_benchmark(
    settings: Settings, database: Database, request: Request, raw_token_id: str
) -> tuple[BenchmarkPublic, bool]:
    """Store a new version of the token's benchmark; returns it and whether it is the first."""
    token_id = normalize_token_id(raw_token_id)
    async with database.transaction(read_only=True) as session:
        token = await tokens.get(session, token_id)
    if token is None:
        raise TokenNotFound(f"no token {token_id}")
    spec = benchmarks.metric_for_benchmark(token.metric)
    incoming = settings.benchmark_dir / ".incoming" / str(uuid.uuid4())
    await anyio.to_thread.run_sync(lambda: incoming.mkdir(mode=0o700, parents=True))
    try:
        row = await _receive_and_store(
            settings, database, request, token_id=token_id, spec=spec, incoming=incoming
        )
    finally:
        await anyio.to_thread.run_sync(benchmarks.remove, incoming)
    log.info(
        "benchmark_stored",
        token_id=token_id,
        version=row.version,
        rows=row.rows,
        columns=len(row.features),
        sha256=row.sha256,
    )
    return BenchmarkPublic.of(row), row.version == 1


def _upload_limits(settings: Settings) -> UploadLimits:
    return UploadLimits(
        max_upload_bytes=settings.max_benchmark_bytes,
        max_predictions_bytes=0,
        idle_timeout_seconds=settings.upload_idle_timeout_seconds,
        min_bytes_per_second=settings.upload_min_bytes_per_second,
        deadline_seconds=settings.upload_deadline_seconds,
    )


async def _receive_and_store(
    settings: Settings,
    database: Database,
    request: Request,
    *,
    token_id: str,
    spec: MetricSpec,
    incoming: Path,
) -> Benchmark:
    """Receive the dataset into `incoming`, parse it into a storage folder of its own and insert
    its row; the storage folder goes again if any of it fails."""
    folder: Path | None = None
    try:
        received = await benchmarks.receive_dataset(
            request, directory=incoming, limits=_upload_limits(settings)
        )
        benchmark_id, storage = await anyio.to_thread.run_sync(
            benchmarks.new_storage, settings.benchmark_dir
        )
        folder = storage
        parsed = await anyio.to_thread.run_sync(
            lambda: benchmarks.parse_benchmark(
                spec, received.path, storage, label_column=received.label_column
            )
        )
        return await _insert_benchmark(
            database,
            Benchmark(
                id=benchmark_id,
                token_id=token_id,
                version=0,
                sha256=received.sha256,
                size_bytes=received.size,
                rows=parsed.rows,
                label_column=parsed.label_column,
                metric=spec.name,
                features=parsed.features,
                classes=parsed.classes,
            ),
        )
    except BaseException:
        if folder is not None:
            await anyio.to_thread.run_sync(benchmarks.remove, folder)
        raise


async def _insert_benchmark(database: Database, row: Benchmark) -> Benchmark:
    """Give the row the token's next version number; a racing upload takes the next one."""
    for _ in range(5):
        try:
            async with database.transaction() as session:
                latest = await repository.latest_benchmark(session, row.token_id)
                row.version = (latest.version if latest else 0) + 1
                row.created_at = utcnow()
                session.add(row)
                await session.flush()
            return row
        except IntegrityError:
            continue
    raise RegistrationInProgress("the benchmark is being replaced by another upload; try again")


async def get_benchmark(database: Database, raw_token_id: str) -> BenchmarkPublic:
    token_id = normalize_token_id(raw_token_id)
    async with database.transaction(read_only=True) as session:
        if await tokens.get(session, token_id) is None:
            raise TokenNotFound(f"no token {token_id}")
        row = await repository.latest_benchmark(session, token_id)
    if row is None:
        raise BenchmarkNotFound(f"token {token_id} has no benchmark")
    return BenchmarkPublic.of(row)
