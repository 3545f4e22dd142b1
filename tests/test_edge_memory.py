"""The edge's command memory on disk: what a reboot finds."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.memory import CommandMemory
from edge_agent.reconciler import OutletMemory

pytestmark = pytest.mark.pure


def test_memory_survives_a_restart(tmp_path: Path) -> None:
    """What an outlet applied is on disk once saved, and read back after a restart."""
    path = tmp_path / "commands.sqlite"
    memory = CommandMemory(path)
    memory.save(OutletMemory(3, 7, True, "wc-1", 1.8e9))
    assert CommandMemory(path).load(range(1, 5))[3] == OutletMemory(3, 7, True, "wc-1", 1.8e9)
    memory.save(OutletMemory(3, 8, False, "wc-1", None))
    memory.close()

    again = CommandMemory(path)
    assert again.load(range(1, 5))[3] == OutletMemory(3, 8, False, "wc-1", None)
    assert again.load(range(1, 5))[1] == OutletMemory(1)
    again.close()
