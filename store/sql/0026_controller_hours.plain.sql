-- Plain PostgreSQL: each controller's outlets summed per hour, kept beside outlet_hourly,
-- so a site's month is read from (controllers × hours) rows instead of (outlets × hours)
-- rows spread one per page over outlet_hourly: 28,800 page visits for a site of 40
-- outlets, ~100 ms at 100 M readings, and a plan that read the whole table.
--
-- The outlet trigger (0023) now remembers which outlet hours it touched (those that got
-- minutes, and the hours whose prev_last_wh moved) and recomputes those controllers'
-- hours from outlet_hourly: a handful of rows per statement, found through
-- outlet_hourly_by_controller (an index of columns that never change, so the
-- minute-by-minute updates of outlet_hourly stay HOT). It also recomputes prev_last_wh
-- only where it can change (new hours, and the hour after each touched one), instead of
-- for every touched hour.

CREATE TABLE controller_outlets_hourly (
    controller_id text NOT NULL,
    hour          timestamptz NOT NULL,
    energy_wh     double precision NOT NULL,  -- the sum of its outlets' energy_wh that hour
    readings      bigint NOT NULL,
    PRIMARY KEY (controller_id, hour)
) WITH (fillfactor = 70);

CREATE INDEX outlet_hourly_by_controller ON outlet_hourly (controller_id, hour);

-- An hour's energy from its own row (see 0003 for the rule): the one place it is
-- written, for the controller sums below and the hourly views (an SQL function the
-- planner inlines).
CREATE FUNCTION chargeline_hour_energy(first_wh double precision, last_wh double precision,
                                       prev_last_wh double precision)
RETURNS double precision LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN prev_last_wh IS NULL OR last_wh < prev_last_wh
                THEN last_wh - first_wh ELSE last_wh - prev_last_wh END
$$;

CREATE OR REPLACE VIEW energy_outlet_hourly AS
SELECT o.outlet_id, c.site_id, h.controller_id, h.outlet_no, h.hour,
       chargeline_hour_energy(h.first_wh, h.last_wh, h.prev_last_wh) AS energy_wh,
       h.readings, h.max_current_a, h.sum_voltage_v / h.readings AS avg_voltage_v
FROM outlet_hourly h
JOIN controllers c ON c.controller_id = h.controller_id
LEFT JOIN outlets o ON o.controller_id = h.controller_id AND o.outlet_no = h.outlet_no;

CREATE OR REPLACE VIEW main_meter_hourly AS
SELECT c.site_id, h.controller_id, h.hour,
       chargeline_hour_energy(h.first_wh, h.last_wh, h.prev_last_wh) AS energy_wh,
       h.readings
FROM main_meter_hourly_rollup h JOIN controllers c ON c.controller_id = h.controller_id
WHERE c.has_main_meter;

CREATE OR REPLACE FUNCTION chargeline_outlet_hourly_add() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    t_controller text[];
    t_outlet smallint[];
    t_hour timestamptz[];
    t_new boolean[];
    p_controller text[];
    p_outlet smallint[];
    p_hour timestamptz[];
BEGIN
    -- The minutes into their hours; which hours they touched, and which were new.
    WITH up AS (
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
            sum_voltage_v = h.sum_voltage_v + excluded.sum_voltage_v
        RETURNING h.controller_id, h.outlet_no, h.hour, h.xmax = 0 AS inserted
    )
    SELECT array_agg(controller_id), array_agg(outlet_no), array_agg(hour), array_agg(inserted)
    INTO t_controller, t_outlet, t_hour, t_new FROM up;

    -- prev_last_wh can change only for an hour that is new, and for the next hour with
    -- data after any touched hour (its previous hour's last reading may have moved). Minutes
    -- arriving in order touch the outlet's latest hour, which has no next hour: then only
    -- the first minutes of each hour cost this pass anything.
    WITH touched AS (
        SELECT * FROM unnest(t_controller, t_outlet, t_hour, t_new) t (controller_id, outlet_no, hour, inserted)
    ), targets AS (
        SELECT controller_id, outlet_no, hour FROM touched WHERE inserted
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
    ), moved AS (
        UPDATE outlet_hourly h SET prev_last_wh = f.prev_last_wh
        FROM fresh f
        WHERE h.controller_id = f.controller_id AND h.outlet_no = f.outlet_no
          AND h.hour = f.hour AND h.prev_last_wh IS DISTINCT FROM f.prev_last_wh
        RETURNING h.controller_id, h.outlet_no, h.hour
    )
    SELECT array_agg(controller_id), array_agg(outlet_no), array_agg(hour)
    INTO p_controller, p_outlet, p_hour FROM moved;

    -- The controllers' hours whose outlets' energy may have changed, summed again over all
    -- their outlets.
    INSERT INTO controller_outlets_hourly AS c (controller_id, hour, energy_wh, readings)
    SELECT h.controller_id, h.hour,
           sum(chargeline_hour_energy(h.first_wh, h.last_wh, h.prev_last_wh)), sum(h.readings)
    FROM (
        SELECT controller_id, hour FROM unnest(t_controller, t_hour) u (controller_id, hour)
        UNION
        SELECT controller_id, hour FROM unnest(p_controller, p_hour) u (controller_id, hour)
    ) g
    -- LATERAL: each hour through the index, whatever plan PL/pgSQL keeps for a join.
    CROSS JOIN LATERAL (
        SELECT x.controller_id, x.hour, x.first_wh, x.last_wh, x.prev_last_wh, x.readings
        FROM outlet_hourly x WHERE x.controller_id = g.controller_id AND x.hour = g.hour
    ) h
    GROUP BY 1, 2
    ON CONFLICT (controller_id, hour) DO UPDATE SET
        energy_wh = excluded.energy_wh, readings = excluded.readings
    WHERE (c.energy_wh, c.readings) IS DISTINCT FROM (excluded.energy_wh, excluded.readings);
    RETURN NULL;
END $$;

-- The main meters' hours, with the same narrower prev_last_wh pass.
CREATE OR REPLACE FUNCTION chargeline_main_meter_hourly_add() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    t_controller text[];
    t_hour timestamptz[];
    t_new boolean[];
BEGIN
    WITH up AS (
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
            readings = h.readings + excluded.readings
        RETURNING h.controller_id, h.hour, h.xmax = 0 AS inserted
    )
    SELECT array_agg(controller_id), array_agg(hour), array_agg(inserted)
    INTO t_controller, t_hour, t_new FROM up;

    WITH touched AS (
        SELECT * FROM unnest(t_controller, t_hour, t_new) t (controller_id, hour, inserted)
    ), targets AS (
        SELECT controller_id, hour FROM touched WHERE inserted
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

-- What is stored already.
INSERT INTO controller_outlets_hourly (controller_id, hour, energy_wh, readings)
SELECT controller_id, hour, sum(chargeline_hour_energy(first_wh, last_wh, prev_last_wh)),
       sum(readings)
FROM outlet_hourly GROUP BY 1, 2;

-- A site's hours: its controllers' outlet hours beside its main meters' hours. Same
-- columns and numbers as before (0025).
CREATE OR REPLACE VIEW energy_site_hourly AS
SELECT site_id, hour, coalesce(sum(outlets_wh), 0) AS outlets_wh,
       sum(main_meter_wh) AS main_meter_wh
FROM (
    SELECT c.site_id, h.hour, h.energy_wh AS outlets_wh, NULL::double precision AS main_meter_wh
    FROM controller_outlets_hourly h JOIN controllers c ON c.controller_id = h.controller_id
    UNION ALL
    SELECT site_id, hour, NULL, energy_wh FROM main_meter_hourly
) e
GROUP BY site_id, hour;

GRANT SELECT ON controller_outlets_hourly TO chargeline_analyst;
GRANT SELECT, INSERT, UPDATE ON controller_outlets_hourly TO chargeline_ingest;
