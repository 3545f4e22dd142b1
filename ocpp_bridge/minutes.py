"""Minute frames from a station's samples: pure.

A controller measures every outlet at each minute boundary; a station instead reports
each connector's samples when it likes (every ``MeterValueSampleInterval``, aligned or
not), sometimes late (queued while offline, then sent in their own time order). The
``MinuteFramer`` files each sample under its minute (``floor(at / 60) * 60``: a sample
from 12:01:00 to 12:01:59 is minute 12:01; the latest one of a minute wins) and hands out
a minute's frame once it is complete:

- when the station's own clock has moved past it: a sample stamped ``SETTLE_S`` or more
  after the minute's end means every earlier sample has arrived, since a station sends in
  time order (this is what places late, queued samples in their own minutes);
- or when the bridge's clock is ``IDLE_S`` past the minute's end (an idle station that
  sent nothing since).

A connector that sent nothing in a minute has no reading in that minute's frame (a gap the
store shows), rather than a repeated one. A sample for a minute already handed out is
refused (``late``), never re-sent: the raw frame log keeps it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from schemas.messages import MeterFrame, OutletReading

SETTLE_S = 5.0
IDLE_S = 90.0


@dataclass
class MinuteFramer:
    #: Minutes already handed out are all below this.
    done_below: int = 0
    #: Station time of the latest sample seen.
    watermark: float = 0.0
    pending: dict[int, dict[int, OutletReading]] = field(default_factory=dict)
    late: int = 0

    def add(self, at: float, reading: OutletReading) -> list[MeterFrame]:
        """File one connector's sample (station time ``at``); return the frames now due."""
        minute = int(at // 60) * 60
        if minute < self.done_below:
            self.late += 1
            return []
        self.pending.setdefault(minute, {})[reading.outlet] = reading
        self.watermark = max(self.watermark, at)
        return self._due(self.watermark - SETTLE_S)

    def idle(self, now: float) -> list[MeterFrame]:
        """The bridge's clock says ``now``: the frames no sample can still be waited for."""
        return self._due(now - IDLE_S)

    def _due(self, until: float) -> list[MeterFrame]:
        """Frames of every pending minute that ended at or before ``until``, oldest first."""
        ready = sorted(m for m in self.pending if m + 60 <= until)
        frames = []
        for minute in ready:
            readings = self.pending.pop(minute)
            outlets = tuple(readings[n] for n in sorted(readings))
            main = round(sum(r.energy_wh for r in outlets), 3)
            frames.append(MeterFrame(minute=minute, main_energy_wh=main, outlets=outlets))
            self.done_below = max(self.done_below, minute + 60)
        return frames
