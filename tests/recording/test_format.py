"""The recording file: round trips, compression, cut tails and foreign files."""

from __future__ import annotations

import gzip
import logging
from pathlib import Path

import pytest

from simulators.recording import (
    FORMAT_VERSION,
    MAGIC,
    Frame,
    RecordingFormatError,
    RecordingReader,
    RecordingWriter,
)

FRAMES = [
    Frame(0.0, "aquafleet/v1/dev-001/status", b'{"state":"online"}', qos=1, retain=True),
    Frame(0.25, "aquafleet/v1/dev-001/telemetry", b'{"seq":1}' * 50, qos=1),
    Frame(0.5, "aquafleet/v1/dev-002/event", b"", qos=0),
    Frame(3600.000001, "aquafleet/v1/\u6c34-003/telemetry", bytes(range(256)), qos=2, retain=True),
]


def write(path: Path, frames: list[Frame], **kwargs: object) -> None:
    with RecordingWriter(path, **kwargs) as writer:  # type: ignore[arg-type]
        for frame in frames:
            writer.write(frame)


def read(path: Path) -> tuple[list[Frame], str | None]:
    with RecordingReader(path) as reader:
        frames = list(reader)
        return frames, reader.truncated


@pytest.mark.parametrize("name", ["plain.rec", "packed.rec.gz"])
def test_round_trip_keeps_every_field(tmp_path, name):
    path = tmp_path / name
    write(path, FRAMES, filters=["aquafleet/v1/#"], extra={"note": "x"})
    frames, truncated = read(path)
    assert frames == FRAMES
    assert truncated is None
    with RecordingReader(path) as reader:
        assert reader.header.version == FORMAT_VERSION
        assert reader.header.filters == ("aquafleet/v1/#",)
        assert reader.header.extra == {"note": "x"}


def test_gz_name_compresses_and_is_smaller(tmp_path):
    payload = b'{"tds_in": 300.0}' * 20
    frames = [Frame(i / 10, "aquafleet/v1/dev-001/telemetry", payload) for i in range(500)]
    write(tmp_path / "a.rec", frames)
    write(tmp_path / "a.rec.gz", frames)
    assert (tmp_path / "a.rec.gz").read_bytes()[:2] == b"\x1f\x8b"
    assert (tmp_path / "a.rec.gz").stat().st_size < (tmp_path / "a.rec").stat().st_size / 5
    assert read(tmp_path / "a.rec.gz")[0] == frames


def test_frames_are_readable_while_the_recording_is_still_open(tmp_path):
    path = tmp_path / "live.rec.gz"
    writer = RecordingWriter(path, flush_interval_s=0.0)
    try:
        for frame in FRAMES[:2]:
            writer.write(frame)
        # a recorder killed now leaves exactly this on disk
        frames, truncated = read(path)
        assert frames == FRAMES[:2]
        assert truncated is not None
    finally:
        writer.close()


@pytest.mark.parametrize("compress", [False, True])
def test_a_cut_tail_replays_up_to_the_last_whole_frame_with_a_warning(tmp_path, caplog, compress):
    whole = tmp_path / "whole.rec"
    write(whole, FRAMES, compress=compress)
    data = whole.read_bytes()
    if compress:
        data = gzip.decompress(data)
    # cut inside the last frame, as a crash mid-write would
    cut_at = len(data) - 10
    cut = tmp_path / "cut.rec"
    if compress:
        packer = gzip.compress  # stream without its end marker: drop the 8-byte trailer too
        cut.write_bytes(packer(data[:cut_at])[:-8])
    else:
        cut.write_bytes(data[:cut_at])
    with caplog.at_level(logging.WARNING, logger="simulators.recording"):
        frames, truncated = read(cut)
    assert frames == FRAMES[:-1]
    assert truncated is not None
    assert "ends early" in caplog.text
    assert "3 whole frame(s)" in caplog.text


def test_garbage_after_the_last_frame_is_caught_by_the_checksum(tmp_path):
    path = tmp_path / "torn.rec"
    write(path, FRAMES)
    with path.open("r+b") as f:
        f.seek(-3, 2)
        f.write(b"\x00\x00\x00")
    frames, truncated = read(path)
    assert frames == FRAMES[:-1]
    assert truncated is not None
    assert "checksum" in truncated


def test_a_recording_cut_after_its_header_is_empty_not_an_error(tmp_path):
    path = tmp_path / "empty.rec"
    write(path, [])
    assert read(path) == ([], None)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "not an aquafleet recording"),
        (b"device_id,class\nx,y\n", "not an aquafleet recording"),
        (gzip.compress(b"hello\n"), "not an aquafleet recording"),
        (MAGIC + b"99 {}\n", "format version 99 is not supported"),
        (MAGIC + b"x {}\n", "malformed recording header"),
        (MAGIC + b"1 [1]\n", "malformed recording header"),
        (MAGIC + b"1 {", "header is cut"),
        (b"\x1f\x8b\x08garbage", "not a readable recording"),
    ],
)
def test_foreign_files_are_refused_in_one_line(tmp_path, content, message):
    path = tmp_path / "foreign.rec"
    path.write_bytes(content)
    with pytest.raises(RecordingFormatError, match=message) as caught:
        RecordingReader(path)
    assert "\n" not in str(caught.value)


def test_a_missing_file_is_refused(tmp_path):
    with pytest.raises(RecordingFormatError, match="cannot read"):
        RecordingReader(tmp_path / "nope.rec")


def test_frames_validate_themselves():
    with pytest.raises(ValueError, match="qos"):
        Frame(0.0, "t", b"", qos=3)
    with pytest.raises(ValueError, match="negative"):
        Frame(-1.0, "t", b"")
    with pytest.raises(ValueError, match="topic"):
        Frame(0.0, "", b"")
