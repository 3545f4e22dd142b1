-- Plain PostgreSQL: the hourly aggregates are ordinary views over the raw readings.
-- 0002_hourly_aggregates.timescale.sql builds the same columns as continuous aggregates.
-- Buckets start on the hour in UTC (date_bin with a UTC origin, like time_bucket).

CREATE VIEW outlet_energy_hourly_agg AS
SELECT controller_id,
       outlet_no,
       date_bin(INTERVAL '1 hour', minute, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS hour,
       (array_agg(energy_wh ORDER BY minute ASC))[1]  AS first_wh,
       (array_agg(energy_wh ORDER BY minute DESC))[1] AS last_wh,
       count(*)        AS readings,
       max(current_a)  AS max_current_a,
       avg(voltage_v)  AS avg_voltage_v
FROM outlet_readings
GROUP BY 1, 2, 3;

CREATE VIEW main_meter_hourly_agg AS
SELECT controller_id,
       date_bin(INTERVAL '1 hour', minute, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS hour,
       (array_agg(energy_wh ORDER BY minute ASC))[1]  AS first_wh,
       (array_agg(energy_wh ORDER BY minute DESC))[1] AS last_wh,
       count(*) AS readings
FROM main_meter_readings
GROUP BY 1, 2;
