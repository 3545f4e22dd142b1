-- The partner app's three screens (issue 17): places to charge, the history of charges,
-- usage and fees.

-- Places: where a site is, how to reach it, when it is open. Coordinates are WGS 84
-- degrees; a site without them is listed, but never found by a search near a point.
ALTER TABLE sites
    ADD COLUMN latitude      double precision CHECK (latitude BETWEEN -90 AND 90),
    ADD COLUMN longitude     double precision CHECK (longitude BETWEEN -180 AND 180),
    ADD COLUMN address       text NOT NULL DEFAULT '',
    ADD COLUMN opening_hours text NOT NULL DEFAULT '24/7',
    ADD COLUMN access_notes  text NOT NULL DEFAULT '',
    ADD CONSTRAINT sites_both_coordinates CHECK ((latitude IS NULL) = (longitude IS NULL));

-- The search near a point reads a latitude band, then the longitudes inside it, from this
-- index alone (a plain B-tree: no extension needed).
CREATE INDEX sites_by_position ON sites (latitude, longitude, site_id)
    WHERE latitude IS NOT NULL;

-- What kind of charging point an outlet is, and whether it takes new charges.
ALTER TABLE outlets
    ADD COLUMN kind       text NOT NULL DEFAULT 'ac_outlet'
        CHECK (kind IN ('ac_outlet', 'ocpp_ac', 'ocpp_dc')),
    ADD COLUMN in_service boolean NOT NULL DEFAULT true;

-- What each outlet is now, for the places search, the site page and the availability
-- webhooks alike: out of service, offline (its controller), charging (an active charge,
-- whoever's), or available. The active states are charging/lifecycle.ACTIVE, as in the
-- index charges_one_active_per_outlet, which serves the lookup.
CREATE VIEW outlet_live_status AS
SELECT o.outlet_id, o.controller_id, o.outlet_no, c.site_id, o.kind, o.rated_current_a,
       CASE WHEN NOT o.in_service THEN 'out_of_service'
            WHEN s.online IS NOT TRUE THEN 'offline'
            WHEN EXISTS (SELECT 1 FROM charges a WHERE a.outlet_id = o.outlet_id
                         AND a.state IN ('drawing', 'on', 'requested', 'stopping'))
                THEN 'charging'
            ELSE 'available' END AS status
FROM outlets o JOIN controllers c USING (controller_id)
LEFT JOIN controller_status s USING (controller_id);
CREATE INDEX controllers_by_site ON controllers (site_id);

-- Tariffs with their validity: each row is in force from valid_from until the next one of
-- its site. The registry's tariff_per_kwh is the one from the beginning (1970-01-01 UTC).
CREATE TABLE site_tariffs (
    site_id    text NOT NULL REFERENCES sites ON DELETE CASCADE,
    valid_from timestamptz NOT NULL,
    per_kwh    numeric(12, 4) NOT NULL CHECK (per_kwh >= 0),
    PRIMARY KEY (site_id, valid_from)
);
INSERT INTO site_tariffs (site_id, valid_from, per_kwh)
SELECT site_id, '1970-01-01 00:00:00+00', tariff_per_kwh FROM sites;

-- The price per kWh in force at a site at an instant (the site's own tariff_per_kwh for a
-- site written without its tariff rows, e.g. straight into the table).
CREATE FUNCTION tariff_at(site text, at timestamptz) RETURNS numeric
LANGUAGE sql STABLE AS $$
    SELECT coalesce(
        (SELECT per_kwh FROM site_tariffs WHERE site_id = site AND valid_from <= at
         ORDER BY valid_from DESC LIMIT 1),
        (SELECT tariff_per_kwh FROM sites WHERE site_id = site))
$$;

-- A charge keeps the price in force when it was requested, and its billed energy and fee
-- follow from its energy, computed once here for every reader: kWh rounded to the Wh,
-- times the price, rounded to the hundredth of the currency unit. The sum of a month's
-- records is the month's bill, to the cent.
ALTER TABLE charges
    ADD COLUMN tariff_per_kwh numeric(12, 4),
    ADD COLUMN currency       text;
UPDATE charges c SET tariff_per_kwh = s.tariff_per_kwh, currency = s.currency
FROM outlets o JOIN controllers USING (controller_id) JOIN sites s USING (site_id)
WHERE o.outlet_id = c.outlet_id;
ALTER TABLE charges
    ALTER COLUMN tariff_per_kwh SET NOT NULL,
    ALTER COLUMN currency SET NOT NULL,
    ADD COLUMN energy_kwh numeric GENERATED ALWAYS AS
        (round((energy_wh / 1000)::numeric, 3)) STORED,
    ADD COLUMN fee numeric GENERATED ALWAYS AS
        (round(round((energy_wh / 1000)::numeric, 3) * tariff_per_kwh, 2)) STORED;

-- A client's history, newest first, paged by (requested_at, its own charge id).
CREATE INDEX charges_history ON charges (client_id, requested_at DESC, partner_charge_id DESC);
CREATE INDEX charges_history_by_outlet
    ON charges (client_id, outlet_id, requested_at DESC, partner_charge_id DESC);
-- A client's monthly usage reads its stopped charges by stop time.
CREATE INDEX charges_stopped ON charges (client_id, stopped_at) WHERE state = 'stopped';

-- Availability (an outlet is available when it is in service, its controller is online
-- and no charge is active on it): a change marks the outlet here, in the transaction that
-- made it; the gateway publishes what changed as outlet.availability webhooks, coalesced
-- and at most one per outlet per interval, and remembers what it said last.
CREATE TABLE availability_changes (
    outlet_id  text PRIMARY KEY REFERENCES outlets ON DELETE CASCADE,
    changed_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE outlet_availability (
    outlet_id    text PRIMARY KEY REFERENCES outlets ON DELETE CASCADE,
    status       text NOT NULL,
    published_at timestamptz NOT NULL
);

-- The triggers fire only on what can change availability: a charge's state (ingest
-- rewrites the state with every reading), a controller's presence, an outlet's service.
CREATE FUNCTION chargeline_outlet_availability_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO availability_changes (outlet_id) VALUES (NEW.outlet_id)
    ON CONFLICT (outlet_id) DO NOTHING;
    RETURN NULL;
END $$;
CREATE TRIGGER charges_availability_new AFTER INSERT ON charges
    FOR EACH ROW EXECUTE FUNCTION chargeline_outlet_availability_changed();
CREATE TRIGGER charges_availability_state AFTER UPDATE OF state ON charges
    FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state)
    EXECUTE FUNCTION chargeline_outlet_availability_changed();
CREATE TRIGGER outlets_availability_new AFTER INSERT ON outlets
    FOR EACH ROW EXECUTE FUNCTION chargeline_outlet_availability_changed();
CREATE TRIGGER outlets_availability_service AFTER UPDATE OF in_service ON outlets
    FOR EACH ROW WHEN (OLD.in_service IS DISTINCT FROM NEW.in_service)
    EXECUTE FUNCTION chargeline_outlet_availability_changed();

CREATE FUNCTION chargeline_controller_availability_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO availability_changes (outlet_id)
    SELECT outlet_id FROM outlets WHERE controller_id = NEW.controller_id
    ON CONFLICT (outlet_id) DO NOTHING;
    RETURN NULL;
END $$;
CREATE TRIGGER controller_status_availability_new AFTER INSERT ON controller_status
    FOR EACH ROW EXECUTE FUNCTION chargeline_controller_availability_changed();
CREATE TRIGGER controller_status_availability_online AFTER UPDATE OF online
    ON controller_status FOR EACH ROW WHEN (OLD.online IS DISTINCT FROM NEW.online)
    EXECUTE FUNCTION chargeline_controller_availability_changed();

-- An installation upgraded to this version: partners read the outlets' state as it is now
-- (GET /v1/sites), so that is what they have heard; the next change is announced against
-- it. (Without this, a charge starting on an outlet never announced would say nothing:
-- "never announced" counts as unavailable, which is right only for new outlets.)
INSERT INTO outlet_availability (outlet_id, status, published_at)
SELECT outlet_id, status, now() FROM outlet_live_status;

GRANT SELECT ON site_tariffs, outlet_live_status TO chargeline_gateway;
GRANT SELECT, INSERT, UPDATE, DELETE ON site_tariffs TO chargeline_ingest;
GRANT SELECT, INSERT, UPDATE, DELETE ON availability_changes TO chargeline_gateway;  -- FOR UPDATE
GRANT SELECT, INSERT ON availability_changes TO chargeline_ingest;
GRANT SELECT, INSERT, UPDATE ON outlet_availability TO chargeline_gateway;
GRANT SELECT ON site_tariffs, outlet_availability, outlet_live_status TO chargeline_analyst;
