"""Where the database is: the configured server, or the embedded PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import psycopg

from aquafleet.config import Settings
from aquafleet.db.embedded import EmbeddedPostgres
from aquafleet.errors import DatabaseUnavailable

CONNECT_TIMEOUT_S = 10


@dataclass
class Database:
    """A reachable database: its URL and, when embedded, the server kept alive for it.

    Close it (or use it as a context manager) when done: an embedded server is stopped once the
    last process that uses it has let go of it; its data stays.
    """

    url: str
    embedded: EmbeddedPostgres | None = field(default=None, repr=False)

    @classmethod
    def open(cls, settings: Settings) -> Database:
        if settings.database_url is not None:
            return cls(url=settings.database_url)
        server = EmbeddedPostgres.start(settings.state_dir / "pgdata")
        return cls(url=server.url, embedded=server)

    def connect(self, *, autocommit: bool = False) -> psycopg.Connection[tuple[object, ...]]:
        try:
            return psycopg.connect(
                self.url, autocommit=autocommit, connect_timeout=CONNECT_TIMEOUT_S
            )
        except psycopg.OperationalError as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DatabaseUnavailable(f"cannot connect to the database: {reason}") from exc

    @contextmanager
    def connection(
        self, *, autocommit: bool = False
    ) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
        conn = self.connect(autocommit=autocommit)
        try:
            yield conn
        finally:
            conn.close()

    def close(self) -> None:
        if self.embedded is not None:
            self.embedded.release()
            self.embedded = None

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
