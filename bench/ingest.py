"""Benchmark of `aquafleet ingest` against a bare paho-mqtt subscriber.

One run measures, with the same messages through the same Mosquitto:
  (a) baseline: a bare paho-mqtt QoS 1 subscriber (MQTT 5, persistent session) that only counts,
      driving paho's loop in its own thread (``loop_forever``, paho's fastest use). For
      reference, the same subscriber with paho's background thread (``loop_start``) is
      measured too (each acknowledgement then waits for the next turn of paho's select loop);
  (b) `aquafleet ingest` with one worker, end to end until the last row is committed;
  (c) `aquafleet ingest --workers 2` on the shared subscription.

Every consumer's session is registered first, then all messages are published once and queue
in the broker for each of them, so every consumer drains the same backlog. Times run from the
consumer's connection to its last message (a) or last commit (b, c; read from the ingest
metrics endpoint, which moves only after a commit; scraped every 250 ms, and every 10 ms once
97 % are stored). Ends with one JSON line.

    .venv/bin/python bench/ingest.py [--messages 100000] [--devices 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import datetime
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fix_mqtt import MosquittoBroker  # noqa: E402
from tests.fix_pg import PgServer, _free_port  # noqa: E402
from tests.ingest.fleet import as_raw, device_ids, prepare_database, telemetry  # noqa: E402

AQUAFLEET = Path(sys.executable).with_name("aquafleet")
TOPIC_FILTER = "aquafleet/v1/+/telemetry"


def publish(broker: MosquittoBroker, payloads: list[tuple[str, bytes]]) -> float:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-pub", protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect(broker.host, broker.port)
    client.loop_start()
    started = time.perf_counter()
    # In chunks, so paho's outgoing queue stays small.
    for chunk in range(0, len(payloads), 10_000):
        infos = [client.publish(t, p, qos=1) for t, p in payloads[chunk : chunk + 10_000]]
        for info in infos:
            info.wait_for_publish(300)
    elapsed = time.perf_counter() - started
    client.loop_stop()
    client.disconnect()
    return elapsed


def _session_props() -> Properties:
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 3600
    return props


def register_baseline(broker: MosquittoBroker, client_id: str) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    subscribed = threading.Event()
    client.on_subscribe = lambda *args: subscribed.set()
    client.connect(broker.host, broker.port, clean_start=False, properties=_session_props())
    client.subscribe(TOPIC_FILTER, qos=1)
    while not subscribed.is_set():
        client.loop(0.1)
    client.disconnect()


def run_baseline(broker: MosquittoBroker, n: int, client_id: str, *, threaded: bool) -> float:
    """The bare subscriber: connect, drain the backlog, count. Returns msgs/s."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    received = 0
    finished = 0.0
    done = threading.Event()

    def on_message(c: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        nonlocal received, finished
        received += 1
        if received == n:
            finished = time.perf_counter()
            done.set()
            if not threaded:
                c.disconnect()

    client.on_message = on_message
    started = time.perf_counter()
    client.connect(broker.host, broker.port, clean_start=False, properties=_session_props())
    if threaded:
        client.loop_start()
        done.wait(600)
        client.disconnect()
        client.loop_stop()
    else:
        client.loop_forever()
    if received != n:
        raise RuntimeError(f"baseline received {received} of {n}")
    return n / (finished - started)


class Ingest:
    def __init__(
        self, database_url: str, broker: MosquittoBroker, workers: int, name: str, writer: str
    ) -> None:
        self.metrics_port = _free_port()
        self.log = Path(tempfile.mkstemp(prefix=f"bench-{name}-", suffix=".log")[1])
        self.args = [
            str(AQUAFLEET), "ingest", "--workers", str(workers), "--client-id", name,
            "--group", name, "--metrics-port", str(self.metrics_port), "--writer", writer,
        ]  # fmt: skip
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("AQUAFLEET_")}
        self.env.update(
            AQUAFLEET_DATABASE_URL=database_url,
            AQUAFLEET_BROKER_URL=broker.url,
            AQUAFLEET_LOG_FORMAT="json",
            AQUAFLEET_STATE_DIR=str(self.log.parent / f"{name}-state"),
        )
        self.workers = workers
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                self.args, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip

    def connected_times(self) -> list[float]:
        times = []
        for line in self.log.read_text().splitlines():
            if line.startswith("{") and '"event":"connected"' in line:
                ts = json.loads(line)["ts"]
                times.append(datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp())
        return times

    def wait_connected(self, count: int, after: int = 0, timeout: float = 60) -> list[float]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            times = self.connected_times()[after:]
            if len(times) >= count:
                return times
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"ingest exited:\n{self.log.read_text()}")
            time.sleep(0.05)
        raise RuntimeError(f"ingest did not connect:\n{self.log.read_text()}")

    def stored(self) -> int:
        try:
            url = f"http://127.0.0.1:{self.metrics_port}/metrics"
            with urllib.request.urlopen(url, timeout=5) as response:
                text = response.read().decode()
        except OSError:
            return 0
        return int(
            sum(
                float(m)
                for m in re.findall(
                    r'^aquafleet_ingest_messages_stored_total\{kind="[a-z]+"\} (\S+)$', text, re.M
                )
            )
        )

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(60)


def run_ingest(ingest: Ingest, n: int) -> float:
    """Start ingest on its queued backlog; msgs/s from its connection to the last commit."""
    already = len(ingest.connected_times())
    ingest.start()
    connected = min(ingest.wait_connected(ingest.workers, after=already))
    # Each scrape of the metrics endpoint costs the ingest process CPU: look rarely while far
    # from the end, often near it, so the end is timed closely without slowing what is timed.
    while True:
        stored = ingest.stored()
        if stored >= n:
            finished = time.time()
            break
        time.sleep(0.01 if stored >= 0.97 * n else 0.25)
    ingest.stop()
    if stored != n:
        raise RuntimeError(f"ingest stored {stored} of {n}")
    return n / (finished - connected)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--writer", choices=["process", "thread"], default="process")
    args = parser.parse_args()
    n, devices = args.messages, device_ids(args.devices, prefix="BENCH")

    broker = MosquittoBroker()
    pg = PgServer(timescaledb=True)
    try:
        broker.start()
        pg.start()
        urls = [pg.url(pg.create_database()) for _ in range(2)]
        for url in urls:
            prepare_database(url, devices)
        per_device = -(-n // len(devices))
        messages = [
            as_raw(telemetry(d, seq))
            for seq in range(1, per_device + 1)
            for d in devices
        ][:n]  # fmt: skip
        payloads = [(m.topic, m.payload) for m in messages]
        print(f"{n} telemetry messages of {len(payloads[0][1])} bytes from {len(devices)} devices")

        # Register every consumer's session, so the broker queues the backlog for each.
        register_baseline(broker, "bench-base")
        register_baseline(broker, "bench-base-threaded")
        one = Ingest(urls[0], broker, 1, "bench-one", args.writer)
        two = Ingest(urls[1], broker, 2, "bench-two", args.writer)
        for ingest in (one, two):
            ingest.start()
            ingest.wait_connected(ingest.workers)
            ingest.stop()

        elapsed = publish(broker, payloads)
        print(f"published in {elapsed:.1f} s ({n / elapsed:,.0f} msgs/s)")

        baseline = run_baseline(broker, n, "bench-base", threaded=False)
        print(f"(a) bare paho QoS 1 subscriber:   {baseline:>9,.0f} msgs/s  (loop_forever)")
        threaded = run_baseline(broker, n, "bench-base-threaded", threaded=True)
        print(f"    the same with loop_start:     {threaded:>9,.0f} msgs/s  (reference)")
        one_rate = run_ingest(one, n)
        print(
            f"(b) aquafleet ingest, 1 worker:   {one_rate:>9,.0f} msgs/s  "
            f"ratio {one_rate / baseline:.2f}"
        )
        two_rate = run_ingest(two, n)
        print(
            f"(c) aquafleet ingest, 2 workers:  {two_rate:>9,.0f} msgs/s  "
            f"ratio {two_rate / baseline:.2f}"
        )
        print(
            json.dumps(
                {
                    "messages": n,
                    "devices": len(devices),
                    "cpus": os.cpu_count(),
                    "baseline_msgs_per_s": round(baseline),
                    "one_worker_msgs_per_s": round(one_rate),
                    "two_workers_msgs_per_s": round(two_rate),
                    "ratio_one_worker": round(one_rate / baseline, 3),
                    "ratio_two_workers": round(two_rate / baseline, 3),
                    "baseline_loop_start_msgs_per_s": round(threaded),
                    "ratio_one_worker_vs_loop_start": round(one_rate / threaded, 3),
                    "ratio_two_workers_vs_loop_start": round(two_rate / threaded, 3),
                    "writer": args.writer,
                }
            )
        )
    finally:
        broker.cleanup()
        pg.cleanup()


if __name__ == "__main__":
    main()
