"""The dispatcher: delivers every outbox event to every webhook endpoint and to Redis.

One loop, run inside the API process by default and by `hokusai-registry worker` processes:

1. **Fan out**: under a lock on the fan-out cursor, new outbox events (in sequence order, which is
   commit order) become one `Delivery` row per recipient, and the cursor moves past them.
2. **Claim**: due deliveries are leased to this worker (`FOR UPDATE SKIP LOCKED` on PostgreSQL), so
   workers never attempt the same delivery at once; a lease that runs out (a worker died) frees it.
3. **Deliver** concurrently, then **record** each attempt and the delivery's next state: delivered,
   retried later on the schedule (or after `Retry-After`), dead after the schedule, or the endpoint
   disabled on `410 Gone`. A result is stored only while the lease is still ours.

The loop wakes on the new-events signal (in-process, or PostgreSQL NOTIFY via the listener), and
polls as a fallback, so new events go out within milliseconds and due retries within a poll.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any

import structlog
from sqlmodel.ext.asyncio.session import AsyncSession

from app import observability
from app.config import Environment, Settings
from app.db import Database, utcnow
from app.events import delivery_repository as repo
from app.events.models import (
    Channel,
    Delivery,
    DeliveryAttempt,
    DeliveryStatus,
    OutboxEvent,
    PayloadFormat,
    WebhookEndpoint,
)
from app.events.outbox import envelope
from app.events.redis_channel import RedisPublisher
from app.events.retries import next_state
from app.events.signal import EventSignal, new_events
from app.events.static_endpoints import sync_static_endpoint
from app.events.webhooks.sender import AttemptResult, WebhookSender
from app.events.webhooks.site_format import site_body

log = structlog.get_logger(__name__)

HOUSEKEEPING_SECONDS = 600.0
STOP_TIMEOUT_SECONDS = 30.0
# Never spin: a claim that finds nothing waits at least this long.
MIN_IDLE_SECONDS = 0.01


def worker_name() -> str:
    return f"{socket.gethostname()[:30]}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def matches(event_types: Sequence[str], event_type: str) -> bool:
    return "*" in event_types or event_type in event_types


@dataclass(slots=True)
class _Work:
    delivery: Delivery
    event: OutboxEvent | None
    endpoint: WebhookEndpoint | None


class Dispatcher:
    """Fans out, claims, delivers and records, until stopped."""

    def __init__(
        self,
        *,
        settings: Settings,
        database: Database,
        sender: WebhookSender,
        redis: RedisPublisher | None,
        signal: EventSignal = new_events,
        worker: str | None = None,
    ) -> None:
        self.settings = settings
        self.database = database
        self.sender = sender
        self.redis = redis
        self.signal = signal
        self.worker = worker or worker_name()
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(settings.dispatcher_concurrency)
        self._in_flight: set[asyncio.Task[None]] = set()
        self._finished: list[tuple[_Work, dt.datetime, AttemptResult]] = []
        self._next_housekeeping = 0.0
        # When the next delivery falls due, as the last round's transaction saw it (wrapped, so
        # that "none pending" differs from "not looked up"); the idle wait that follows uses it.
        self._next_due: tuple[dt.datetime | None] | None = None

    # The loop ------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Work until `stop()`; errors are logged and retried after a pause, never fatal.

        Deliveries run as independent tasks, up to `dispatcher_concurrency` at once, and the loop
        claims more as soon as slots free up: one slow receiver holds one slot, not a batch.
        """
        log.info("dispatcher_started", worker=self.worker)
        self.signal.add_listener(self._wake)
        failures = 0
        try:
            while not self._stopping.is_set():
                self._wake.clear()
                self._next_due = None
                try:
                    busy = await self._round()
                    await self._housekeeping()
                    failures = 0
                except Exception:
                    failures += 1
                    log.exception("dispatcher_error", worker=self.worker, failures=failures)
                    await self._sleep(min(2.0**failures, 30.0))
                    continue
                if not busy:
                    with suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), await self._idle_seconds())
        finally:
            self.signal.remove_listener(self._wake)
            await self._drain()
        log.info("dispatcher_stopped", worker=self.worker)

    async def _round(self) -> bool:
        """Record finished deliveries, then fan out and start what is due; True if more may be."""
        await self._flush()
        concurrency = self.settings.dispatcher_concurrency
        free = concurrency - len(self._in_flight)
        # While deliveries are in flight, claim in groups (half the slots) rather than one by
        # one as each finishes: fewer, larger transactions.
        if free <= 0 or (self._in_flight and free < max(1, concurrency // 2)):
            return False
        limit = min(self.settings.dispatcher_batch_size, free)
        fanned, work = await self._fan_out_and_claim(limit, look_ahead=True)
        for item in work:
            task = asyncio.create_task(self._deliver(item))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)
        return self._more_waiting(fanned, work, limit)

    def _more_waiting(self, fanned: int, work: Sequence[_Work], limit: int) -> bool:
        # A fan-out short of a full batch took every event there was; one committed since then
        # has set the wake-up (or is found by the poll), so another round now would find nothing.
        return fanned == self.settings.dispatcher_batch_size or len(work) == limit

    async def _deliver(self, item: _Work) -> None:
        started_at, result = await self._attempt(item)
        self._finished.append((item, started_at, result))
        self._wake.set()

    async def _flush(self) -> None:
        """Store the results of finished deliveries, all in one transaction."""
        if not self._finished:
            return
        finished, self._finished = self._finished, []
        await self._record(
            [item for item, _, _ in finished],
            [(started_at, result) for _, started_at, result in finished],
        )

    async def _drain(self) -> None:
        """On stop: let deliveries in flight finish (bounded) and keep their results."""
        if self._in_flight:
            await asyncio.wait(self._in_flight, timeout=STOP_TIMEOUT_SECONDS)
        try:
            await self._flush()
        except Exception:
            # Unrecorded attempts are made again once their lease runs out: at-least-once.
            log.exception("dispatcher_results_not_recorded", worker=self.worker)

    async def _idle_seconds(self) -> float:
        """How long to sleep: until the next retry is due, at most one poll interval."""
        poll = self.settings.dispatcher_poll_seconds
        known, self._next_due = self._next_due, None
        if known is not None:
            (due,) = known
        else:
            async with self.database.transaction(read_only=True) as session:
                due = await repo.next_due(session)
        if due is None:
            return poll
        return min(poll, max((due - utcnow()).total_seconds(), MIN_IDLE_SECONDS))

    async def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    async def run_once(self) -> bool:
        """One synchronous round: fan out, deliver what is due, record; True if there was work."""
        fanned, work = await self._fan_out_and_claim(self.settings.dispatcher_batch_size)
        if work:
            results = await asyncio.gather(*(self._attempt(item) for item in work))
            await self._record(work, results)
        return fanned > 0 or bool(work)

    async def _sleep(self, seconds: float) -> None:
        with suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    # Fan-out and claims --------------------------------------------------------------------------

    async def fan_out(self) -> int:
        """Turn new outbox events into deliveries; returns how many events were fanned out."""
        async with self.database.transaction() as session:
            return await self._fan_out_in(session)

    async def deliver_due(self) -> int:
        """Claim due deliveries, make them concurrently, record the results."""
        async with self.database.transaction() as session:
            work = await self._claim_in(session, self.settings.dispatcher_batch_size)
        if work:
            results = await asyncio.gather(*(self._attempt(item) for item in work))
            await self._record(work, results)
        return len(work)

    async def _fan_out_and_claim(
        self, limit: int, *, look_ahead: bool = False
    ) -> tuple[int, list[_Work]]:
        """Both in one transaction: one round trip to the database's write lock, not two.

        With `look_ahead`, a round after which the loop goes idle also notes, in the same
        transaction, when the next delivery falls due: the idle wait needs no transaction of its
        own.
        """
        async with self.database.transaction() as session:
            fanned = await self._fan_out_in(session)
            work = await self._claim_in(session, limit)
            if look_ahead and not self._more_waiting(fanned, work, limit):
                self._next_due = (await repo.next_due(session),)
        return fanned, work

    async def _fan_out_in(self, session: AsyncSession) -> int:
        cursor = await repo.lock_cursor(session)
        if cursor is None:  # another worker is fanning out right now
            return 0
        events = await repo.events_after(
            session, cursor.position, self.settings.dispatcher_batch_size
        )
        if not events:
            return 0
        endpoints = await repo.endpoints(session)
        deliveries: list[Delivery] = []
        for event in events:
            deliveries += self._recipients(event, endpoints)
        if deliveries:
            session.add_all(deliveries)
            await session.flush()
        await repo.move_cursor(session, events[-1].sequence or cursor.position, utcnow())
        return len(events)

    async def _claim_in(self, session: AsyncSession, limit: int) -> list[_Work]:
        now = utcnow()
        claimed = await repo.claim_due(
            session,
            worker=self.worker,
            now=now,
            lease_until=now + dt.timedelta(seconds=self.settings.dispatcher_lease_seconds),
            limit=limit,
        )
        if not claimed:
            return []
        events = await repo.events_by_id(session, (d.event_id for d in claimed))
        endpoints = await repo.endpoints_by_id(session, (d.endpoint_id for d in claimed))
        return [
            _Work(d, events.get(d.event_id), endpoints.get(d.endpoint_id or "")) for d in claimed
        ]

    def _recipients(
        self, event: OutboxEvent, endpoints: Sequence[WebhookEndpoint]
    ) -> list[Delivery]:
        if event.audience is not None:  # a ping for one endpoint, active or not
            return [
                repo.new_delivery(event, Channel.WEBHOOK, endpoint.id)
                for endpoint in endpoints
                if endpoint.id == event.audience
            ]
        deliveries = [
            repo.new_delivery(event, Channel.WEBHOOK, endpoint.id)
            for endpoint in endpoints
            if endpoint.active and matches(endpoint.event_types, event.event_type)
        ]
        if self.redis is not None:
            deliveries.append(repo.new_delivery(event, Channel.REDIS, None))
        return deliveries

    # Delivery ------------------------------------------------------------------------------------

    async def _attempt(self, item: _Work) -> tuple[dt.datetime, AttemptResult]:
        started_at = utcnow()
        async with self._slots:
            result = await self._send(item)
        observability.DELIVERY_SECONDS.labels(item.delivery.channel.value).observe(
            result.duration_ms / 1000
        )
        return started_at, result

    async def _send(self, item: _Work) -> AttemptResult:
        if item.event is None:
            return _failure("the event is no longer in the outbox")
        body = envelope(item.event)
        if item.delivery.channel is Channel.REDIS:
            if self.redis is None:
                return _failure("Redis is not configured")
            return await self.redis.publish(body)
        endpoint = item.endpoint
        if endpoint is None:
            return _failure("the webhook endpoint was deleted")
        if not endpoint.active and item.event.audience is None:
            return _failure("the webhook endpoint is inactive")
        raw: bytes | None = None
        if endpoint.payload_format is PayloadFormat.HOKUSAI_SITE:
            raw = site_body(item.event)
            if raw is None:
                return _failure(
                    f"not sent: the hokusai_site format carries model_registered only, "
                    f"not {item.event.event_type}"
                )
        return await self.sender.send(
            url=endpoint.url,
            secret=endpoint.secret,
            envelope=body,
            body=raw,
            previous_secret=endpoint.previous_secret
            if endpoint.previous_secret_expires_at
            and endpoint.previous_secret_expires_at > utcnow()
            else None,
        )

    async def _record(
        self, work: Sequence[_Work], results: Sequence[tuple[dt.datetime, AttemptResult]]
    ) -> None:
        """Store each attempt and its delivery's next state, in one transaction; a result is
        stored only while the lease is still this worker's."""
        now = utcnow()
        async with self.database.transaction() as session:
            for item, (started_at, result) in zip(work, results, strict=True):
                await self._record_one(session, item, started_at, result, now)

    async def _record_one(
        self,
        session: AsyncSession,
        item: _Work,
        started_at: dt.datetime,
        result: AttemptResult,
        now: dt.datetime,
    ) -> None:
        delivery = item.delivery
        attempts = delivery.attempts + 1
        outcome, state = next_state(
            result,
            attempts=attempts,
            schedule=self.settings.webhook_retry_schedule,
            now=now,
            event_exists=item.event is not None,
            endpoint_exists=item.endpoint is not None,
        )
        values: dict[str, Any] = {
            "attempts": attempts,
            "last_attempt_at": started_at,
            "last_status_code": result.status_code,
            "last_error": result.error,
            "updated_at": now,
        } | state
        if outcome == "disabled" and item.endpoint is not None:
            await repo.disable_endpoint(
                session,
                item.endpoint.id,
                reason=f"the receiver answered 410 Gone at {now.isoformat()}",
                now=now,
            )
        attempt = DeliveryAttempt(
            delivery_id=delivery.id,
            attempt=attempts,
            worker=self.worker,
            started_at=started_at,
            duration_ms=round(result.duration_ms, 3),
            status_code=result.status_code,
            error=result.error,
            response_excerpt=result.response_excerpt,
            outcome=outcome,
        )
        stored = await repo.record_result(
            session, delivery=delivery, worker=self.worker, attempt=attempt, values=values
        )
        if not stored:
            log.warning("delivery_lease_lost", delivery_id=delivery.id, worker=self.worker)
            return
        observability.DELIVERIES.labels(delivery.channel.value, outcome).inc()
        if outcome != "delivered":
            _log_failed_attempt(delivery, attempts, outcome, result)

    # Housekeeping --------------------------------------------------------------------------------

    async def _housekeeping(self) -> None:
        """Now and then: log and export the backlog, and apply the retention settings."""
        if time.monotonic() < self._next_housekeeping:
            return
        self._next_housekeeping = time.monotonic() + HOUSEKEEPING_SECONDS
        self._next_due = None
        await self.housekeeping()

    async def housekeeping(self) -> dict[str, int]:
        now = utcnow()
        async with self.database.transaction() as session:
            deleted = await repo.delete_expired(
                session,
                deliveries_before=now - dt.timedelta(days=self.settings.delivery_retention_days),
                events_before=now - dt.timedelta(days=self.settings.event_retention_days),
            )
            counts = await repo.counts(session)
        observability.DELIVERY_BACKLOG.set(counts.get(DeliveryStatus.PENDING.value, 0))
        observability.DEAD_DELIVERIES.set(counts.get(DeliveryStatus.DEAD.value, 0))
        observability.OUTBOX_LAG.set(counts.get("unfanned", 0))
        figures = {
            **counts,
            "deleted_deliveries": deleted[0],
            "deleted_events": deleted[1],
        }
        log.info("event_delivery_status", **figures)
        return figures


def _log_failed_attempt(
    delivery: Delivery, attempts: int, outcome: str, result: AttemptResult
) -> None:
    log.info(
        "delivery_attempt_failed",
        delivery_id=delivery.id,
        event_id=delivery.event_id,
        channel=delivery.channel.value,
        endpoint_id=delivery.endpoint_id,
        attempt=attempts,
        outcome=outcome,
        status_code=result.status_code,
        error=result.error,
    )


def _failure(error: str) -> AttemptResult:
    return AttemptResult(
        ok=False,
        status_code=None,
        error=error,
        duration_ms=0.0,
        response_excerpt=None,
        retry_after=None,
        gone=False,
        blocked=False,
    )


@asynccontextmanager
async def dispatching(
    settings: Settings, database: Database, *, worker: str | None = None
) -> AsyncIterator[Dispatcher]:
    """Run a dispatcher in the background for the duration of the block."""
    sender = WebhookSender(
        allow_private=settings.allow_private_webhook_targets,
        require_https=settings.env is Environment.PRODUCTION,
        timeout=settings.webhook_timeout_seconds,
    )
    redis = (
        RedisPublisher(settings.redis_url, stream_maxlen=settings.redis_stream_maxlen)
        if settings.redis_url
        else None
    )
    dispatcher = Dispatcher(
        settings=settings, database=database, sender=sender, redis=redis, worker=worker
    )
    await sync_static_endpoint(database, settings)
    task = asyncio.create_task(dispatcher.run(), name="hokusai-dispatcher")
    try:
        yield dispatcher
    finally:
        await dispatcher.stop()
        try:
            await asyncio.wait_for(task, STOP_TIMEOUT_SECONDS)
        except TimeoutError:
            log.warning("dispatcher_stop_timed_out", worker=dispatcher.worker)
        await sender.aclose()
        if redis is not None:
            await redis.aclose()
