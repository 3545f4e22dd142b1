-- Plain PostgreSQL: the hourly aggregates are views over the raw readings, so late data
-- shows at once and nothing is dropped. The procedure ingest calls after writing late data
-- (see the .timescale.sql twin) has nothing to do here.
CREATE PROCEDURE chargeline_refresh_late(window_start timestamptz, window_end timestamptz)
LANGUAGE plpgsql AS $$
BEGIN
END $$;
