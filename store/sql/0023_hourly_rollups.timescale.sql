-- TimescaleDB: the hourly aggregates are continuous aggregates already (0002), kept by
-- TimescaleDB and refreshed for late minutes by ingest (0014). Nothing to add here; the
-- plain flavour's tables (0023_hourly_rollups.plain.sql) bring it the same property: a
-- month of one outlet or site is read from its hours, not from every minute.
SELECT 1;
