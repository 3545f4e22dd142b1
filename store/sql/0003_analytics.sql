-- Analyst views: energy per outlet and per site, per hour, day and month.
-- They read the hourly aggregates (plain views or continuous aggregates, see 0002), so both
-- storage flavours give the same numbers. Documented in docs/analytics.md.
--
-- Energy in an hour = the last cumulative reading of the hour minus the last reading of
-- the outlet's previous hour with data, so energy drawn across an hour boundary is counted
-- once, in the hour it ends in. For an outlet's first hour, or after a meter reset (the
-- register went down), it is last minus first within the hour.

CREATE VIEW energy_outlet_hourly AS
WITH h AS (
    SELECT a.*, lag(a.last_wh) OVER (PARTITION BY a.controller_id, a.outlet_no ORDER BY a.hour) AS prev_last_wh
    FROM outlet_energy_hourly_agg a
)
SELECT o.outlet_id, c.site_id, h.controller_id, h.outlet_no, h.hour,
       CASE WHEN h.prev_last_wh IS NULL OR h.last_wh < h.prev_last_wh
            THEN h.last_wh - h.first_wh
            ELSE h.last_wh - h.prev_last_wh END AS energy_wh,
       h.readings, h.max_current_a, h.avg_voltage_v
FROM h
JOIN controllers c ON c.controller_id = h.controller_id
LEFT JOIN outlets o ON o.controller_id = h.controller_id AND o.outlet_no = h.outlet_no;

-- Days and months are the site's local calendar (sites.timezone).
CREATE VIEW energy_outlet_daily AS
SELECT e.outlet_id, e.site_id, e.controller_id, e.outlet_no,
       (e.hour AT TIME ZONE s.timezone)::date AS day,
       sum(e.energy_wh) AS energy_wh, sum(e.readings) AS readings
FROM energy_outlet_hourly e JOIN sites s ON s.site_id = e.site_id
GROUP BY 1, 2, 3, 4, 5;

CREATE VIEW energy_outlet_monthly AS
SELECT e.outlet_id, e.site_id, e.controller_id, e.outlet_no,
       date_trunc('month', e.hour AT TIME ZONE s.timezone)::date AS month,
       sum(e.energy_wh) AS energy_wh, sum(e.readings) AS readings
FROM energy_outlet_hourly e JOIN sites s ON s.site_id = e.site_id
GROUP BY 1, 2, 3, 4, 5;

CREATE VIEW main_meter_hourly AS
WITH h AS (
    SELECT a.*, lag(a.last_wh) OVER (PARTITION BY a.controller_id ORDER BY a.hour) AS prev_last_wh
    FROM main_meter_hourly_agg a
)
SELECT c.site_id, h.controller_id, h.hour,
       CASE WHEN h.prev_last_wh IS NULL OR h.last_wh < h.prev_last_wh
            THEN h.last_wh - h.first_wh
            ELSE h.last_wh - h.prev_last_wh END AS energy_wh,
       h.readings
FROM h JOIN controllers c ON c.controller_id = h.controller_id
WHERE c.has_main_meter;

-- Per site: outlet energy (sum of its outlets) beside main-meter energy (whole feeder).
CREATE VIEW energy_site_hourly AS
WITH o AS (SELECT site_id, hour, sum(energy_wh) AS outlets_wh FROM energy_outlet_hourly GROUP BY 1, 2),
     m AS (SELECT site_id, hour, sum(energy_wh) AS main_meter_wh FROM main_meter_hourly GROUP BY 1, 2)
SELECT site_id, hour, coalesce(o.outlets_wh, 0) AS outlets_wh, m.main_meter_wh
FROM o FULL JOIN m USING (site_id, hour);

CREATE VIEW energy_site_daily AS
SELECT e.site_id, (e.hour AT TIME ZONE s.timezone)::date AS day,
       sum(e.outlets_wh) AS outlets_wh, sum(e.main_meter_wh) AS main_meter_wh
FROM energy_site_hourly e JOIN sites s USING (site_id)
GROUP BY 1, 2;

CREATE VIEW energy_site_monthly AS
SELECT e.site_id, date_trunc('month', e.hour AT TIME ZONE s.timezone)::date AS month,
       sum(e.outlets_wh) AS outlets_wh, sum(e.main_meter_wh) AS main_meter_wh
FROM energy_site_hourly e JOIN sites s USING (site_id)
GROUP BY 1, 2;

-- Read-only role for analysts: the views and readings, nothing else.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'chargeline_analyst') THEN
        CREATE ROLE chargeline_analyst NOLOGIN;
    END IF;
END $$;
GRANT SELECT ON outlet_readings, main_meter_readings, sites, controllers, outlets,
    outlet_energy_hourly_agg, main_meter_hourly_agg,
    energy_outlet_hourly, energy_outlet_daily, energy_outlet_monthly, main_meter_hourly,
    energy_site_hourly, energy_site_daily, energy_site_monthly, meter_seq_gaps
    TO chargeline_analyst;
