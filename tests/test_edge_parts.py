"""Edge parts without a network: the simulated site and the store-and-forward buffer."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import msgpack
import pytest

from edge_agent.buffer import FrameBuffer
from edge_agent.simulated import SimulatedSite
from schemas.messages import MeterFrame, OutletReading

pytestmark = pytest.mark.pure

T0 = 1_767_225_600.0


def frame(minute_index: int) -> MeterFrame:
    minute = int(T0) + 60 * minute_index
    return MeterFrame(
        minute=minute,
        main_energy_wh=1000.0 + minute_index,
        outlets=(
            OutletReading(
                outlet=1,
                energy_wh=10.0 + minute_index,
                voltage_v=200.0,
                current_a=1.0,
                breaker_on=True,
            ),
        ),
    )


def test_energy_never_decreases_and_breakers_gate_current() -> None:
    """Cumulative energy is monotonic; an OFF breaker draws nothing; ON with a car draws ≤ 16 A."""
    site = SimulatedSite(seed=1, start=T0)
    site.plug_in(1, need_wh=5_000)
    site.plug_in(2, need_wh=5_000)
    site.switch(1, True)
    last = {n: 0.0 for n in range(1, 9)}
    for second in range(1, 3600, 10):
        sample = site.read(T0 + second)
        for o in sample.outlets:
            assert o.energy_wh >= last[o.outlet]
            last[o.outlet] = o.energy_wh
            assert 0 <= o.current_a <= 16
        assert sample.outlets[1].current_a == 0  # outlet 2: car plugged, breaker OFF
    assert sample.outlets[0].energy_wh > 0


def test_car_tapers_to_zero_when_full() -> None:
    """A car that got what it needed stops drawing current."""
    site = SimulatedSite(seed=2, start=T0)
    site.plug_in(1, need_wh=500, max_current_a=16)
    site.switch(1, True)
    start_wh = site.read(T0).outlets[0].energy_wh
    samples = [site.read(T0 + s).outlets[0] for s in range(1, 3600, 5)]
    assert samples[0].current_a > 10
    first_idle = next(o for o in samples if o.current_a == 0)
    assert 490 <= first_idle.energy_wh - start_wh <= 510


def test_failed_breaker_does_not_move() -> None:
    """A breaker told to fail reports it did not switch."""
    site = SimulatedSite(seed=3)
    site.fail(4)
    assert site.switch(4, True) is False
    assert site.switch(5, True) is True


def test_buffer_numbers_batches_and_keeps_seq_across_restarts(tmp_path: Path) -> None:
    """Backlogged frames are grouped into batches; seqs never repeat after a restart."""
    path = tmp_path / "buf.sqlite"
    buf = FrameBuffer(path, controller_id="ctl-1", max_frames=100)
    for i in range(5):
        buf.add(frame(i))
    assert buf.assign(max_frames=2) == [1, 2, 3]
    assert [len(f) for f in buf.batches().values()] == [2, 2, 1]
    buf.close()
    buf = FrameBuffer(path, controller_id="ctl-1", max_frames=100)
    buf.add(frame(5))
    assert buf.assign(max_frames=2) == [4]
    assert list(buf.batches()) == [1, 2, 3, 4]
    assert buf.batches()[1][0] == frame(0)


def test_a_buffer_written_before_wire_version_2_still_reads(tmp_path: Path) -> None:
    """Frames an older edge left on disk have five fields per reading: after an upgrade
    they are sent as they were (no power, no state of charge)."""
    path = tmp_path / "buf.sqlite"
    FrameBuffer(path, controller_id="ctl-1", max_frames=100).close()
    with sqlite3.connect(path) as db:
        body = msgpack.packb((1_767_225_600, 10.0, [(1, 5.0, 200.0, 3.0, True)]))
        db.execute("INSERT INTO frames (minute, body) VALUES (?, ?)", (1_767_225_600, body))
    buf = FrameBuffer(path, controller_id="ctl-1", max_frames=100)
    (batch,) = buf.due({}, now=0.0, older_than=None, max_frames=60)
    reading = batch.frames[0].outlets[0]
    assert reading == (1, 5.0, 200.0, 3.0, True, None, None)
    assert batch.controller_id == "ctl-1" and batch.seq == 1


def test_ack_deletes_exactly_the_named_batches(tmp_path: Path) -> None:
    """An ack for batch 2 does not delete batch 1 (which the broker may have dropped)."""
    buf = FrameBuffer(tmp_path / "buf.sqlite", controller_id="ctl-1", max_frames=100)
    for i in range(3):
        buf.add(frame(i))
    buf.assign(max_frames=1)
    assert buf.ack((2,)) == 1
    assert list(buf.batches()) == [1, 3]


def test_full_buffer_drops_oldest_and_counts(tmp_path: Path) -> None:
    """Past its limit the buffer drops the oldest frames and counts them."""
    buf = FrameBuffer(tmp_path / "buf.sqlite", controller_id="ctl-1", max_frames=10)
    for i in range(15):
        buf.add(frame(i))
    assert len(buf) == 10 and buf.dropped == 5
    buf.assign(max_frames=60)
    assert buf.batches()[1][0] == frame(5)
