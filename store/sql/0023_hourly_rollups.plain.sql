-- Plain PostgreSQL: the hourly aggregates become tables kept as minutes are stored, so
-- the energy views read an outlet's or a site's month from a few hundred rows instead of
-- aggregating every minute of every outlet first (issue 16: 21.5 s for one outlet's
-- hours at 10 M readings). The views keep their columns and their numbers;
-- tests/test_store.py compares them with the raw minutes after late, out-of-order and
-- redelivered batches.
--
-- Each hour row also keeps prev_last_wh, the last reading of the outlet's previous hour
-- with data, so an hour's energy is computed from its own row (no window over the
-- outlet's whole history) and every filter (outlet, site, hour) reaches the index.

CREATE TABLE outlet_hourly (
    controller_id text NOT NULL,
    outlet_no     smallint NOT NULL,
    hour          timestamptz NOT NULL,
    first_minute  timestamptz NOT NULL,
    first_wh      double precision NOT NULL,
    last_minute   timestamptz NOT NULL,
    last_wh       double precision NOT NULL,
    readings      bigint NOT NULL,
    max_current_a real NOT NULL,
    sum_voltage_v double precision NOT NULL,
    prev_last_wh  double precision,
    PRIMARY KEY (controller_id, outlet_no, hour)
) WITH (fillfactor = 70);  -- the current hour's row is rewritten by every write (HOT)

CREATE TABLE main_meter_hourly_rollup (
    controller_id text NOT NULL,
    hour          timestamptz NOT NULL,
    first_minute  timestamptz NOT NULL,
    first_wh      double precision NOT NULL,
    last_minute   timestamptz NOT NULL,
    last_wh       double precision NOT NULL,
    readings      bigint NOT NULL,
    prev_last_wh  double precision,
    PRIMARY KEY (controller_id, hour)
) WITH (fillfactor = 70);

-- Buckets start on the hour in UTC, as before (date_bin with a UTC origin).
CREATE FUNCTION chargeline_hour(minute timestamptz) RETURNS timestamptz
LANGUAGE sql IMMUTABLE AS $$
    SELECT date_bin(INTERVAL '1 hour', minute, TIMESTAMPTZ '2000-01-01 00:00:00+00')
$$;

-- After every statement that stores minutes (ingest's COPY, or its INSERT … ON CONFLICT
-- DO NOTHING for a redelivered batch, whose new rows alone are in "added"): fold them
-- into their hours, then set prev_last_wh of those hours and of the next hour after each
-- (a late minute can change it), writing only the rows whose value moved.
CREATE FUNCTION chargeline_outlet_hourly_add() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO outlet_hourly AS h (controller_id, outlet_no, hour, first_minute, first_wh,
                                    last_minute, last_wh, readings, max_current_a,
                                    sum_voltage_v)
    SELECT controller_id, outlet_no, chargeline_hour(minute),
           min(minute), (array_agg(energy_wh ORDER BY minute))[1],
           max(minute), (array_agg(energy_wh ORDER BY minute DESC))[1],
           count(*), max(current_a), sum(voltage_v::double precision)
    FROM added GROUP BY 1, 2, 3
    ON CONFLICT (controller_id, outlet_no, hour) DO UPDATE SET
        first_wh = CASE WHEN excluded.first_minute < h.first_minute
                        THEN excluded.first_wh ELSE h.first_wh END,
        first_minute = least(h.first_minute, excluded.first_minute),
        last_wh = CASE WHEN excluded.last_minute > h.last_minute
                       THEN excluded.last_wh ELSE h.last_wh END,
        last_minute = greatest(h.last_minute, excluded.last_minute),
        readings = h.readings + excluded.readings,
        max_current_a = greatest(h.max_current_a, excluded.max_current_a),
        sum_voltage_v = h.sum_voltage_v + excluded.sum_voltage_v;

    WITH touched AS (
        SELECT DISTINCT controller_id, outlet_no, chargeline_hour(minute) AS hour FROM added
    ), targets AS (
        SELECT controller_id, outlet_no, hour FROM touched
        UNION
        SELECT t.controller_id, t.outlet_no, n.hour FROM touched t
        CROSS JOIN LATERAL (
            SELECT x.hour FROM outlet_hourly x
            WHERE x.controller_id = t.controller_id AND x.outlet_no = t.outlet_no
              AND x.hour > t.hour
            ORDER BY x.hour LIMIT 1
        ) n
    ), fresh AS (
        SELECT g.controller_id, g.outlet_no, g.hour,
               (SELECT p.last_wh FROM outlet_hourly p
                WHERE p.controller_id = g.controller_id AND p.outlet_no = g.outlet_no
                  AND p.hour < g.hour
                ORDER BY p.hour DESC LIMIT 1) AS prev_last_wh
        FROM targets g
    )
    UPDATE outlet_hourly h SET prev_last_wh = f.prev_last_wh
    FROM fresh f
    WHERE h.controller_id = f.controller_id AND h.outlet_no = f.outlet_no AND h.hour = f.hour
      AND h.prev_last_wh IS DISTINCT FROM f.prev_last_wh;
    RETURN NULL;
END $$;

CREATE FUNCTION chargeline_main_meter_hourly_add() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO main_meter_hourly_rollup AS h (controller_id, hour, first_minute, first_wh,
                                               last_minute, last_wh, readings)
    SELECT controller_id, chargeline_hour(minute),
           min(minute), (array_agg(energy_wh ORDER BY minute))[1],
           max(minute), (array_agg(energy_wh ORDER BY minute DESC))[1], count(*)
    FROM added GROUP BY 1, 2
    ON CONFLICT (controller_id, hour) DO UPDATE SET
        first_wh = CASE WHEN excluded.first_minute < h.first_minute
                        THEN excluded.first_wh ELSE h.first_wh END,
        first_minute = least(h.first_minute, excluded.first_minute),
        last_wh = CASE WHEN excluded.last_minute > h.last_minute
                       THEN excluded.last_wh ELSE h.last_wh END,
        last_minute = greatest(h.last_minute, excluded.last_minute),
        readings = h.readings + excluded.readings;

    WITH touched AS (
        SELECT DISTINCT controller_id, chargeline_hour(minute) AS hour FROM added
    ), targets AS (
        SELECT controller_id, hour FROM touched
        UNION
        SELECT t.controller_id, n.hour FROM touched t
        CROSS JOIN LATERAL (
            SELECT x.hour FROM main_meter_hourly_rollup x
            WHERE x.controller_id = t.controller_id AND x.hour > t.hour
            ORDER BY x.hour LIMIT 1
        ) n
    ), fresh AS (
        SELECT g.controller_id, g.hour,
               (SELECT p.last_wh FROM main_meter_hourly_rollup p
                WHERE p.controller_id = g.controller_id AND p.hour < g.hour
                ORDER BY p.hour DESC LIMIT 1) AS prev_last_wh
        FROM targets g
    )
    UPDATE main_meter_hourly_rollup h SET prev_last_wh = f.prev_last_wh
    FROM fresh f
    WHERE h.controller_id = f.controller_id AND h.hour = f.hour
      AND h.prev_last_wh IS DISTINCT FROM f.prev_last_wh;
    RETURN NULL;
END $$;

-- What is stored already (a database upgraded to this version).
INSERT INTO outlet_hourly (controller_id, outlet_no, hour, first_minute, first_wh, last_minute,
                           last_wh, readings, max_current_a, sum_voltage_v, prev_last_wh)
SELECT controller_id, outlet_no, hour, first_minute, first_wh, last_minute, last_wh, readings,
       max_current_a, sum_voltage_v,
       lag(last_wh) OVER (PARTITION BY controller_id, outlet_no ORDER BY hour)
FROM (
    SELECT controller_id, outlet_no, chargeline_hour(minute) AS hour,
           min(minute) AS first_minute, (array_agg(energy_wh ORDER BY minute))[1] AS first_wh,
           max(minute) AS last_minute, (array_agg(energy_wh ORDER BY minute DESC))[1] AS last_wh,
           count(*) AS readings, max(current_a) AS max_current_a,
           sum(voltage_v::double precision) AS sum_voltage_v
    FROM outlet_readings GROUP BY 1, 2, 3
) a;
INSERT INTO main_meter_hourly_rollup (controller_id, hour, first_minute, first_wh,
                                      last_minute, last_wh, readings, prev_last_wh)
SELECT controller_id, hour, first_minute, first_wh, last_minute, last_wh, readings,
       lag(last_wh) OVER (PARTITION BY controller_id ORDER BY hour)
FROM (
    SELECT controller_id, chargeline_hour(minute) AS hour,
           min(minute) AS first_minute, (array_agg(energy_wh ORDER BY minute))[1] AS first_wh,
           max(minute) AS last_minute, (array_agg(energy_wh ORDER BY minute DESC))[1] AS last_wh,
           count(*) AS readings
    FROM main_meter_readings GROUP BY 1, 2
) a;

CREATE TRIGGER outlet_readings_hourly AFTER INSERT ON outlet_readings
    REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION chargeline_outlet_hourly_add();
CREATE TRIGGER main_meter_readings_hourly AFTER INSERT ON main_meter_readings
    REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION chargeline_main_meter_hourly_add();

-- The aggregates' columns, as before, now read from the tables.
CREATE OR REPLACE VIEW outlet_energy_hourly_agg AS
SELECT controller_id, outlet_no, hour, first_wh, last_wh, readings, max_current_a,
       sum_voltage_v / readings AS avg_voltage_v
FROM outlet_hourly;
CREATE OR REPLACE VIEW main_meter_hourly_agg AS
SELECT controller_id, hour, first_wh, last_wh, readings FROM main_meter_hourly_rollup;

-- An hour's energy from its own row (see 0003 for the rule).
CREATE OR REPLACE VIEW energy_outlet_hourly AS
SELECT o.outlet_id, c.site_id, h.controller_id, h.outlet_no, h.hour,
       CASE WHEN h.prev_last_wh IS NULL OR h.last_wh < h.prev_last_wh
            THEN h.last_wh - h.first_wh
            ELSE h.last_wh - h.prev_last_wh END AS energy_wh,
       h.readings, h.max_current_a, h.sum_voltage_v / h.readings AS avg_voltage_v
FROM outlet_hourly h
JOIN controllers c ON c.controller_id = h.controller_id
LEFT JOIN outlets o ON o.controller_id = h.controller_id AND o.outlet_no = h.outlet_no;

CREATE OR REPLACE VIEW main_meter_hourly AS
SELECT c.site_id, h.controller_id, h.hour,
       CASE WHEN h.prev_last_wh IS NULL OR h.last_wh < h.prev_last_wh
            THEN h.last_wh - h.first_wh
            ELSE h.last_wh - h.prev_last_wh END AS energy_wh,
       h.readings
FROM main_meter_hourly_rollup h JOIN controllers c ON c.controller_id = h.controller_id
WHERE c.has_main_meter;

GRANT SELECT ON outlet_hourly, main_meter_hourly_rollup TO chargeline_analyst;
-- The triggers run with the rights of whoever stores minutes (ingest).
GRANT SELECT, INSERT, UPDATE ON outlet_hourly, main_meter_hourly_rollup TO chargeline_ingest;
