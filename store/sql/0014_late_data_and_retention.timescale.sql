-- TimescaleDB: late data reaches the continuous aggregates, and raw minutes are not dropped.
--
-- Late data. The refresh policies (0002) look back 8 days; a reading older than that,
-- delivered by a controller back from a long outage, would never reach the aggregates.
-- Ingest calls this procedure (outside any transaction, as refresh_continuous_aggregate
-- requires) for exactly the hours it wrote late data into.
CREATE PROCEDURE chargeline_refresh_late(window_start timestamptz, window_end timestamptz)
LANGUAGE plpgsql AS $$
BEGIN
    CALL refresh_continuous_aggregate('outlet_energy_hourly_agg', window_start, window_end);
    CALL refresh_continuous_aggregate('main_meter_hourly_agg', window_start, window_end);
END $$;

-- Retention. A refresh over a range whose raw minutes a retention policy dropped empties
-- the aggregates there too, so the promise "the hourly aggregates keep the energy after
-- raw minutes are dropped" held only until someone refreshed. Raw minutes are kept
-- instead (compressed after 30 days, about a tenth of their size), as on plain
-- PostgreSQL, and both flavours answer the same for any period. docs/analytics.md says
-- how to drop old data deliberately.
SELECT remove_retention_policy('outlet_readings', if_exists => true);
SELECT remove_retention_policy('main_meter_readings', if_exists => true);
