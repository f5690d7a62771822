"""The embedded PostgreSQL: the default store when no database URL is configured.

It is pgserver's PostgreSQL build, installed from PyPI with the product, so a first run needs no
server set up. pgserver runs the server as an unprivileged user when started as root, since
PostgreSQL refuses to run as root. Data lives under the state directory and survives restarts.
This is plain PostgreSQL, without TimescaleDB: the schema works on both.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aquafleet.errors import EmbeddedDatabaseError


@dataclass
class EmbeddedPostgres:
    data_dir: Path
    url: str
    _server: Any

    @classmethod
    def start(cls, data_dir: Path) -> EmbeddedPostgres:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (as under root in CI) and falls
            # back to /tmp, which is what we want anyway.
            warnings.simplefilter("ignore")
            try:
                import pgserver
            except ImportError as exc:  # pragma: no cover - it is a declared dependency
                raise EmbeddedDatabaseError(
                    "the embedded PostgreSQL (pgserver) is not installed; "
                    "install it or set AQUAFLEET_DATABASE_URL"
                ) from exc
            try:
                data_dir.mkdir(parents=True, exist_ok=True)
                # "stop": the server stops when the last process using it exits; data is kept.
                server = pgserver.get_server(  # type: ignore[attr-defined]
                    data_dir, cleanup_mode="stop"
                )
                url = server.get_uri()
            except Exception as exc:  # pgserver raises bare exceptions of several kinds
                raise EmbeddedDatabaseError(
                    f"the embedded PostgreSQL in {data_dir} would not start: {exc}"
                ) from exc
        return cls(data_dir=data_dir, url=url, _server=server)

    def release(self) -> None:
        # a server that is already gone needs no stopping
        with contextlib.suppress(Exception):
            self._server.cleanup()
