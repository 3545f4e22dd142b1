-- A site's hours as a sum over the union of its outlets' and its main meters' hours,
-- instead of a FULL JOIN of the two sums: a filter on site_id or hour now reaches both
-- sides (it could not pass the join's merged columns), so one site's hours are read from
-- that site's rows alone. Same columns, same numbers: an hour with no outlet reading
-- counts 0 Wh for the outlets, one with no main meter NULL.
CREATE OR REPLACE VIEW energy_site_hourly AS
SELECT site_id, hour, coalesce(sum(outlets_wh), 0) AS outlets_wh,
       sum(main_meter_wh) AS main_meter_wh
FROM (
    SELECT site_id, hour, energy_wh AS outlets_wh, NULL::double precision AS main_meter_wh
    FROM energy_outlet_hourly
    UNION ALL
    SELECT site_id, hour, NULL, energy_wh FROM main_meter_hourly
) e
GROUP BY site_id, hour;
