"""Fleet simulator throughput: 100 000 machines publishing to a Mosquitto this script starts.

Runs the simulator as fast as possible over a few simulated minutes, multiplexed over a few
gateway connections (as ``aquafleet simulate`` does at that size), and prints simulated
machine-minutes per second of wall time, messages per second, and resident memory per machine.
The baseline, measured in the same run: the last simulated minute's messages, already built,
published again as many times through the same connections; the ratio is what modelling and
encoding leave of the transport's own rate. Ends with one JSON line of the figures.

    .venv/bin/python bench/simulate.py [--machines 100000] [--minutes 10] [--gateways 4]
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import tempfile
import time
from datetime import UTC, date, datetime
from pathlib import Path

from simulators import Simulation, SimulationConfig, generate_ledger, machines_from_ledger
from simulators.mqtt import BrokerAddress, MqttSink
from simulators.sinks import Action, Outgoing


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _start_mosquitto(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    exe = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
    if exe is None:
        raise SystemExit("mosquitto is not installed")
    port = _free_port()
    conf = workdir / "mosquitto.conf"
    # A wide inflight window: the publisher's QoS 1 pipeline, not the round trip, sets the pace.
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\nmax_inflight_messages 1000\n"
        "max_queued_messages 0\npersistence false\nlog_type error\n"
    )
    proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=None)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("mosquitto did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--machines", type=int, default=100_000)
    parser.add_argument("--minutes", type=int, default=10, help="simulated minutes to time")
    parser.add_argument("--gateways", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="aquafleet-bench-") as tmp:
        proc, port = _start_mosquitto(Path(tmp))
        try:
            rss0 = _rss_bytes()
            t = time.perf_counter()
            machines = machines_from_ledger(
                generate_ledger(args.machines, seed=args.seed, today=date(2025, 3, 1))
            )
            start_ms = int(datetime(2025, 3, 3, 2, 0, tzinfo=UTC).timestamp() * 1000)
            config = SimulationConfig(
                machines=machines,
                start_ms=start_ms,
                duration_ms=args.minutes * 60_000,
                seed=args.seed,
            )
            sink = MqttSink(
                BrokerAddress("127.0.0.1", port), mode="multiplexed", gateways=args.gateways,
                start_ms=start_ms,
            )  # fmt: skip
            sim = Simulation(config, sink)
            setup_s = time.perf_counter() - t
            t = time.perf_counter()
            sink.send(sim.begin())  # every machine connects: status, birth
            begin_s = time.perf_counter() - t
            print(f"setup {setup_s:.1f} s; {args.machines:,} births in {begin_s:.1f} s")
            messages0 = sim.stats.messages
            t = time.perf_counter()
            build_s = 0.0
            last: list[Action] = []
            while not sim.done:
                b = time.perf_counter()
                actions = sim.tick()
                build_s += time.perf_counter() - b
                sink.send(actions)
                last = actions
            wall = time.perf_counter() - t
            rss = _rss_bytes()
            # the baseline: the transport alone, with the messages already built
            replayed = [a for a in last if isinstance(a, Outgoing)]
            t = time.perf_counter()
            for _ in range(args.minutes):
                sink.send(replayed)
            baseline_wall = time.perf_counter() - t
            sink.close()
        finally:
            proc.terminate()
            proc.wait(timeout=10)

    machine_minutes = sim.stats.machine_minutes
    messages = sim.stats.messages - messages0
    baseline_rate = len(replayed) * args.minutes / baseline_wall
    result = {
        "machines": args.machines,
        "simulated_minutes": args.minutes,
        "machine_minutes_per_s": round(machine_minutes / wall),
        "messages_per_s": round(messages / wall),
        "baseline_publish_msgs_per_s": round(baseline_rate),
        "ratio_to_baseline": round(messages / wall / baseline_rate, 3),
        "model_and_encode_share": round(build_s / wall, 2),
        "rss_bytes_per_machine": round((rss - rss0) / args.machines),
        "births_s": round(begin_s, 1),
        "gateways": args.gateways,
    }
    print(
        f"{machine_minutes:,.0f} machine-minutes in {wall:.1f} s: "
        f"{result['machine_minutes_per_s']:,} machine-minutes/s, "
        f"{result['messages_per_s']:,} messages/s "
        f"({result['model_and_encode_share']:.0%} of it modelling and encoding); "
        f"{result['rss_bytes_per_machine']:,} bytes of memory per machine"
    )
    print(
        f"baseline, the same connections publishing built messages: "
        f"{result['baseline_publish_msgs_per_s']:,} messages/s; "
        f"ratio {result['ratio_to_baseline']:.2f}"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
