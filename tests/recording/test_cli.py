"""`aquafleet record` and `aquafleet replay` as a user runs them."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
import uuid

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from simulators.recording import RecordingReader
from tests.fix_cli import AQUAFLEET, cli_environment


def publisher(url: str) -> mqtt.Client:
    host, port = url.removeprefix("mqtt://").split(":")
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    connected = threading.Event()
    client.on_connect = lambda *_: connected.set()
    client.connect(host, int(port))
    client.loop_start()
    assert connected.wait(10)
    return client


def start_recorder(tmp_path, *args: str) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [str(AQUAFLEET), "record", *args],
        env=cli_environment(tmp_path / "state"),
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    # the first line says the subscription is in place
    line = process.stderr.readline()
    assert line.startswith("recording "), line
    return process


def test_record_then_replay_from_the_command_line(mqtt_broker, tmp_path, run_cli):
    root = f"cli-{uuid.uuid4().hex[:8]}"
    out = tmp_path / "fleet.rec.gz"
    recorder = start_recorder(
        tmp_path, "--out", str(out), "--topic", f"{root}/#", "--max-messages", "20",
        "--broker-url", mqtt_broker.url,
    )  # fmt: skip
    client = publisher(mqtt_broker.url)
    try:
        for i in range(20):
            client.publish(f"{root}/dev-{i % 3:03d}/telemetry", f"{i}".encode(), qos=1)
        _, stderr = recorder.communicate(timeout=30)
    finally:
        client.disconnect()
        client.loop_stop()
    assert recorder.returncode == 0, stderr
    assert "recorded 20 message(s)" in stderr
    with RecordingReader(out) as reader:
        assert [f.payload for f in reader] == [f"{i}".encode() for i in range(20)]

    result = run_cli(
        "replay", str(out), "--speed", "10", env={"AQUAFLEET_BROKER_URL": mqtt_broker.url}
    )
    assert result.returncode == 0, result.stderr
    assert "replayed 20 message(s)" in result.stderr


def test_a_killed_recorder_leaves_a_replayable_file(mqtt_broker, tmp_path, run_cli):
    root = f"cli-{uuid.uuid4().hex[:8]}"
    out = tmp_path / "killed.rec.gz"
    recorder = start_recorder(
        tmp_path, "--out", str(out), "--topic", f"{root}/#", "--broker-url", mqtt_broker.url
    )
    client = publisher(mqtt_broker.url)
    try:
        for _ in range(50):
            client.publish(f"{root}/dev-001/telemetry", b"x" * 100, qos=1).wait_for_publish(10)
        time.sleep(1.0)  # past the writer's flush interval
        recorder.send_signal(signal.SIGKILL)
        recorder.wait(10)
    finally:
        client.disconnect()
        client.loop_stop()
        if recorder.stderr is not None:
            recorder.stderr.close()
    result = run_cli("replay", str(out), "--as-fast-as-possible", "--broker-url", mqtt_broker.url)
    assert result.returncode == 0, result.stderr
    assert "replayed 50 message(s)" in result.stderr
    assert "ends early" in result.stderr


def test_sigterm_ends_a_recording_cleanly(mqtt_broker, tmp_path):
    out = tmp_path / "stopped.rec"
    recorder = start_recorder(
        tmp_path, "--out", str(out), "--topic", "nothing-here/#", "--broker-url", mqtt_broker.url
    )
    recorder.send_signal(signal.SIGTERM)
    _, stderr = recorder.communicate(timeout=10)
    assert recorder.returncode == 0, stderr
    assert "recorded 0 message(s)" in stderr
    with RecordingReader(out) as reader:
        assert list(reader) == []
        assert reader.truncated is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["replay", "{tmp}/ledger.csv", "--broker-url", "mqtt://127.0.0.1:1"], "not an aquafleet"),
        (["replay", "{tmp}/ledger.csv", "--broker-url", "http://x"], "--broker-url must be"),
        (["record", "--out", "{tmp}/x.rec", "--broker-url", "mqtt://127.0.0.1:1"], "cannot conn"),
        (["record", "--out", "{tmp}/x.rec"], "no broker configured"),
    ],
)
def test_errors_are_one_line(tmp_path, run_cli, args, message):
    (tmp_path / "ledger.csv").write_text("device_id,class\n")
    result = run_cli(*[a.format(tmp=tmp_path) for a in args])
    assert result.returncode != 0
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
