"""Ingest: MQTT edge traffic → validated rows in the timescale-compatible store."""
