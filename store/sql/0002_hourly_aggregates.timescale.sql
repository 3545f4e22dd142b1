-- TimescaleDB (2.x on PostgreSQL 15+). Every Timescale-specific statement of chargeline is in
-- this file. It turns the raw readings into hypertables, builds the hourly aggregates as
-- real-time continuous aggregates with the same columns as the plain flavour's views, and
-- sets compression and retention policies. Written against the TimescaleDB 2.x API
-- (create_hypertable with migrate_data, add_continuous_aggregate_policy,
-- add_compression_policy, add_retention_policy).

CREATE EXTENSION IF NOT EXISTS timescaledb;

SELECT create_hypertable('outlet_readings', 'minute',
                         chunk_time_interval => INTERVAL '7 days', migrate_data => true);
SELECT create_hypertable('main_meter_readings', 'minute',
                         chunk_time_interval => INTERVAL '7 days', migrate_data => true);

CREATE MATERIALIZED VIEW outlet_energy_hourly_agg
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT controller_id,
       outlet_no,
       time_bucket(INTERVAL '1 hour', minute) AS hour,
       first(energy_wh, minute) AS first_wh,
       last(energy_wh, minute)  AS last_wh,
       count(*)        AS readings,
       max(current_a)  AS max_current_a,
       avg(voltage_v)  AS avg_voltage_v
FROM outlet_readings
GROUP BY controller_id, outlet_no, time_bucket(INTERVAL '1 hour', minute)
WITH NO DATA;

CREATE MATERIALIZED VIEW main_meter_hourly_agg
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT controller_id,
       time_bucket(INTERVAL '1 hour', minute) AS hour,
       first(energy_wh, minute) AS first_wh,
       last(energy_wh, minute)  AS last_wh,
       count(*) AS readings
FROM main_meter_readings
GROUP BY controller_id, time_bucket(INTERVAL '1 hour', minute)
WITH NO DATA;

-- Edge buffers can deliver up to a week late; refresh that far back.
SELECT add_continuous_aggregate_policy('outlet_energy_hourly_agg',
    start_offset => INTERVAL '8 days', end_offset => INTERVAL '1 hour',
    schedule_interval => INTERVAL '15 minutes');
SELECT add_continuous_aggregate_policy('main_meter_hourly_agg',
    start_offset => INTERVAL '8 days', end_offset => INTERVAL '1 hour',
    schedule_interval => INTERVAL '15 minutes');

ALTER TABLE outlet_readings SET (timescaledb.compress,
    timescaledb.compress_segmentby = 'controller_id, outlet_no',
    timescaledb.compress_orderby = 'minute');
ALTER TABLE main_meter_readings SET (timescaledb.compress,
    timescaledb.compress_segmentby = 'controller_id',
    timescaledb.compress_orderby = 'minute');
SELECT add_compression_policy('outlet_readings', INTERVAL '30 days');
SELECT add_compression_policy('main_meter_readings', INTERVAL '30 days');

-- Raw minutes are kept five years; the hourly aggregates keep the energy after that.
SELECT add_retention_policy('outlet_readings', INTERVAL '5 years');
SELECT add_retention_policy('main_meter_readings', INTERVAL '5 years');
