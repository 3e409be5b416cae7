"""PostgreSQL going away under the service: its connections are cut, as a restart would cut them."""

from __future__ import annotations

import psycopg
import pytest
import sqlalchemy as sa

from tests.factories import create_token, register
from tests.support.service import POSTGRES_ADMIN_URL, Api


def cut_connections(database: str) -> int:
    """Terminate every session on `database`, as a PostgreSQL restart does."""
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (database,),
        ).fetchall()
    return len(rows)


class TestPostgresRestart:
    async def test_service_reconnects_and_loses_nothing(self, api: Api) -> None:
        if api.backend != "postgres":
            pytest.skip("PostgreSQL only")
        database = api.database.engine.url.database
        assert database is not None
        await create_token(api.client, api.auth(), token_id="PGRESTART")
        # Warm the pool so there are connections to lose.
        assert (await api.client.get("/tokens", headers=api.auth())).status_code == 200
        assert cut_connections(database) >= 1

        # The pool notices dead connections before use (pre-ping) and opens new ones.
        response = await api.client.get("/tokens/PGRESTART", headers=api.auth())
        assert response.status_code == 200
        ready = await api.client.get("/ready")
        assert ready.status_code == 200

        registered = await register(api.client, api.auth(), token_id="PGRESTART")
        assert registered.status_code == 201, registered.text
        cut_connections(database)
        async with api.database.transaction() as session:
            events = (
                (
                    await session.execute(
                        sa.text("SELECT event_type FROM events WHERE token_id = 'PGRESTART'")
                    )
                )
                .scalars()
                .all()
            )
        assert sorted(events) == ["model_registered", "token_ready_for_deploy"]
