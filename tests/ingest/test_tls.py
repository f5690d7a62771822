"""Ingest over TLS (``mqtts://``), as the production configuration has devices and services
connect: the broker's certificate is checked against the trusted CAs, and every message,
including one larger than a TLS record, is stored."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fix_mqtt import MosquittoBroker, _free_port
from tests.ingest.conftest import DEVICES, MakeIngest
from tests.ingest.fleet import Raw, as_raw, count, publish_all, telemetry, wait_until


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, and a certificate it signed for 127.0.0.1."""
    folder = tmp_path_factory.mktemp("tls")
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=AquaFleet test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        cwd=folder,
    )
    _openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        cwd=folder,
    )
    (folder / "san.ext").write_text("subjectAltName = IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", "server.crt",
             cwd=folder)  # fmt: skip
    return folder


@pytest.fixture
def tls_broker(certificates: Path) -> Iterator[tuple[MosquittoBroker, int]]:
    """A broker with its plain listener and a TLS one; yields (broker, TLS port)."""
    tls_port = _free_port()
    broker = MosquittoBroker(
        extra_config=f"listener {tls_port} 127.0.0.1\n"
        f"certfile {certificates / 'server.crt'}\n"
        f"keyfile {certificates / 'server.key'}\n"
        "tls_version tlsv1.2\n"
    )
    broker.start()
    try:
        yield broker, tls_port
    finally:
        broker.cleanup()


def test_ingest_over_tls_stores_everything(
    ledger_url: str, tls_broker: tuple[MosquittoBroker, int], certificates: Path,
    make_ingest: MakeIngest,
) -> None:  # fmt: skip
    broker, tls_port = tls_broker
    ingest = make_ingest(
        ledger_url, f"mqtts://127.0.0.1:{tls_port}", "--client-id", "tls", "--group", "tls",
        env={"SSL_CERT_FILE": str(certificates / "ca.crt")},
    ).start()  # fmt: skip
    # A quarantined payload of 40 kB spans several TLS records.
    big = as_raw(telemetry(DEVICES[0], 9999))
    big = Raw(big.topic, big.payload[:-1] + b',"padding":"' + b"x" * 40_000 + b'"}')
    messages = [telemetry(d, seq) for seq in range(1, 101) for d in DEVICES]

    publish_all(broker.host, broker.port, [*messages[:1000], big, *messages[1000:]])

    wait_until(lambda: count(ledger_url, "telemetry") == len(messages), message="all stored")
    wait_until(lambda: count(ledger_url, "quarantine", "reason = 'too_large'") == 1,
               message="the large one quarantined")  # fmt: skip
    assert "connected to 127.0.0.1" in ingest.log()
    assert ingest.terminate() == 0


def test_an_untrusted_broker_certificate_is_refused(
    ledger_url: str, tls_broker: tuple[MosquittoBroker, int], make_ingest: MakeIngest
) -> None:
    _broker, tls_port = tls_broker
    ingest = make_ingest(
        ledger_url, f"mqtts://127.0.0.1:{tls_port}", "--client-id", "tls-bad", "--group", "tls"
    ).start(wait_running=False)
    ingest.wait_for_log("CERTIFICATE_VERIFY_FAILED", timeout=60)
    assert count(ledger_url, "telemetry") == 0
