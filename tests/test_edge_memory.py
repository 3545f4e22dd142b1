"""The edge's command memory on disk: what a reboot finds."""

from __future__ import annotations

from pathlib import Path

from edge_agent.memory import CommandMemory
from edge_agent.reconciler import OutletMemory


def test_memory_and_the_clock_offset_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "commands.sqlite"
    memory = CommandMemory(path)
    memory.save_clock_offset(-12.5)
    memory.save(OutletMemory(3, 7, True, "wc-1", 1.8e9))
    memory.save_clock_offset(-13.0)  # learned later, written on close
    memory.close()

    again = CommandMemory(path)
    assert again.load(range(1, 5))[3] == OutletMemory(3, 7, True, "wc-1", 1.8e9)
    assert again.load(range(1, 5))[1] == OutletMemory(1)
    assert again.clock_offset() == -13.0
    again.close()


def test_the_offset_is_written_with_the_next_outlet_save(tmp_path: Path) -> None:
    path = tmp_path / "commands.sqlite"
    memory = CommandMemory(path)
    memory.save_clock_offset(4.0)
    assert CommandMemory(path).clock_offset() is None, "not on disk yet"
    memory.save(OutletMemory(1, 1, False))
    assert CommandMemory(path).clock_offset() == 4.0, "on disk with the outlet's memory"
    memory.close()
