"""The face of the ingest component: what `ingest/__init__.py` exports, and nothing private."""

from __future__ import annotations

import ingest


def test_the_public_names_are_exported_and_resolve() -> None:
    assert sorted(ingest.__all__) == sorted(
        [
            "BrokerRefused", "BrokerUnavailable", "CredentialsError", "IngestConfig",
            "IngestCounters", "IngestError", "IngestMetrics", "IngestWorker", "Protocol",
            "RunOptions", "run_ingest",
        ]
    )  # fmt: skip
    for name in ingest.__all__:
        assert getattr(ingest, name) is not None


def test_errors_root_in_the_project_tree() -> None:
    from aquafleet.errors import AquaFleetError

    for error in (ingest.IngestError, ingest.BrokerRefused, ingest.BrokerUnavailable,
                  ingest.CredentialsError):  # fmt: skip
        assert issubclass(error, AquaFleetError)
