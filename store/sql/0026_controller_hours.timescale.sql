-- TimescaleDB: a site's hours are read from the continuous aggregates (0002, 0025), as
-- before; the plain flavour's controller_outlets_hourly (0026_controller_hours.plain.sql)
-- is its stand-in for them.
SELECT 1;
