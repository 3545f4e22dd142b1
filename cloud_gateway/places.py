"""Where a search near a point looks: pure geometry for ``GET /v1/sites?near=``.

The database keeps sites' latitude and longitude under a plain B-tree; a search reads the
latitude band of the circle (and the longitude band, where it does not wrap around the
antimeridian or reach a pole) from that index, then keeps the sites whose great-circle
distance (the haversine formula, on a sphere of the Earth's mean radius) is within the
radius. ``distance_km`` here is the same formula as the SQL's, for tests and tools.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from schemas.errors import InputError

EARTH_RADIUS_KM = 6371.0088  # the IUGG mean radius
KM_PER_DEGREE = math.pi * EARTH_RADIUS_KM / 180


@dataclass(frozen=True, slots=True)
class Point:
    latitude: float
    longitude: float

    @classmethod
    def parse(cls, text: str) -> Point:
        """``lat,lon`` in degrees; an InputError names what is out of range."""
        try:
            lat_text, lon_text = text.split(",")
            latitude, longitude = float(lat_text), float(lon_text)
        except ValueError:
            raise InputError(f"near must be lat,lon in degrees, not {text!r}") from None
        if not (-90 <= latitude <= 90 and -180 <= longitude <= 180):
            raise InputError("near: latitude must be within ±90 and longitude within ±180")
        return cls(latitude, longitude)


@dataclass(frozen=True, slots=True)
class Box:
    """The index ranges a circle lies in; ``longitude`` None: every longitude."""

    latitude: tuple[float, float]
    longitude: tuple[float, float] | None


def bounding_box(centre: Point, radius_km: float) -> Box:
    """The smallest latitude band (and longitude band, when one exists) holding every
    point within ``radius_km`` of ``centre``, widened by a hair against rounding."""
    dlat = radius_km / KM_PER_DEGREE * 1.000001
    lat_lo, lat_hi = centre.latitude - dlat, centre.latitude + dlat
    if lat_lo <= -90 or lat_hi >= 90:  # the circle holds a pole: all longitudes
        return Box((max(lat_lo, -90.0), min(lat_hi, 90.0)), None)
    # The widest longitude span is at the band's latitude nearest a pole.
    widest = max(abs(lat_lo), abs(lat_hi))
    dlon = dlat / math.cos(math.radians(widest))
    lon_lo, lon_hi = centre.longitude - dlon, centre.longitude + dlon
    if lon_lo < -180 or lon_hi > 180:  # wraps around the antimeridian
        return Box((lat_lo, lat_hi), None)
    return Box((lat_lo, lat_hi), (lon_lo, lon_hi))


def distance_km(a: Point, b: Point) -> float:
    """Great-circle distance (haversine), as the database computes it."""
    phi1, phi2 = math.radians(a.latitude), math.radians(b.latitude)
    dphi = phi2 - phi1
    dlam = math.radians(b.longitude - a.longitude)
    h = math.sin(dphi / 2) ** 2 + math.cos(phi1) * math.cos(phi2) * math.sin(dlam / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


#: ``distance_km`` in SQL, from the point (%(lat)s, %(lon)s) to a ``sites`` row ``s``.
DISTANCE_SQL = (
    f"2 * {EARTH_RADIUS_KM} * asin(least(1, sqrt("
    "power(sin(radians(s.latitude - %(lat)s) / 2), 2)"
    " + cos(radians(%(lat)s)) * cos(radians(s.latitude))"
    " * power(sin(radians(s.longitude - %(lon)s) / 2), 2))))"
)
