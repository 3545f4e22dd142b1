-- Site load management (issue 19, DESIGN.md "Site load management"): a site's cap and the
-- windows that lower or raise it, what the site's allocator measured and decided, and the
-- two states a waiting charge can be in (queued: not started yet; paused: rotated out).

-- The registry: a site's cap is its contract current less a margin (NULL: 10 % of the
-- contract); the building's peak sizes the static safe shares; a controller may have its
-- safe share written out.
ALTER TABLE sites
    ADD COLUMN cap_margin_a    real CHECK (cap_margin_a >= 0),
    ADD COLUMN building_peak_a real NOT NULL DEFAULT 0 CHECK (building_peak_a >= 0);
ALTER TABLE controllers
    ADD COLUMN safe_share_a real CHECK (safe_share_a >= 0);

-- Windows that set a site's cap for a time (a demand-response event, a maintenance window,
-- a solar surplus): the most recent window in force wins. Every change names who made it.
CREATE TABLE site_caps (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    site_id    text NOT NULL REFERENCES sites,
    cap_a      real NOT NULL CHECK (cap_a >= 0),
    starts_at  timestamptz NOT NULL,
    ends_at    timestamptz,
    reason     text NOT NULL CHECK (reason IN ('demand_response', 'maintenance',
                                               'solar_surplus', 'manual')),
    note       text NOT NULL DEFAULT '' CHECK (length(note) <= 500),
    set_by     text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    removed_at timestamptz,
    removed_by text,
    CHECK (ends_at IS NULL OR ends_at > starts_at)
);
CREATE INDEX site_caps_by_site ON site_caps (site_id, starts_at) WHERE removed_at IS NULL;

-- What the allocator saw and decided, every period (kept two days; the live view and the
-- console draw the cap against the measured site current from it).
CREATE TABLE site_load (
    site_id     text NOT NULL REFERENCES sites,
    at          timestamptz NOT NULL,
    cap_a       real NOT NULL,
    building_a  real NOT NULL,
    outlets_a   real NOT NULL,
    allocated_a real NOT NULL,
    charging    integer NOT NULL,
    waiting     integer NOT NULL,
    PRIMARY KEY (site_id, at)
);

-- A waiting charge's estimated start, from the allocator (the partner API and the
-- charge.paused webhook show it).
ALTER TABLE charges ADD COLUMN expected_start_at timestamptz;

-- The active states now include queued and paused: the index that keeps one active charge
-- per outlet, the open charges ingest feeds (charging.charges.ACTIVE_SQL, in its order),
-- and each outlet's live status.
DROP INDEX charges_one_active_per_outlet;
CREATE UNIQUE INDEX charges_one_active_per_outlet ON charges (outlet_id)
    WHERE state IN ('drawing', 'on', 'paused', 'queued', 'requested', 'stopping');
DROP INDEX charges_open;
CREATE INDEX charges_open ON charges (controller_id)
    WHERE state IN ('drawing', 'on', 'paused', 'queued', 'requested', 'stopping')
       OR (state = 'stopped' AND NOT reported);
CREATE OR REPLACE VIEW outlet_live_status AS
SELECT o.outlet_id, o.controller_id, o.outlet_no, c.site_id, o.kind, o.rated_current_a,
       CASE WHEN NOT o.in_service THEN 'out_of_service'
            WHEN s.online IS NOT TRUE THEN 'offline'
            WHEN EXISTS (SELECT 1 FROM charges a WHERE a.outlet_id = o.outlet_id
                         AND a.state IN ('drawing', 'on', 'paused', 'queued', 'requested',
                                         'stopping'))
                THEN 'charging'
            ELSE 'available' END AS status
FROM outlets o JOIN controllers c USING (controller_id)
LEFT JOIN controller_status s USING (controller_id);

-- The allocator's service (`chargeline loads`): it reads the sites, their caps and the open
-- charges, writes what it measured and its estimates, and publishes budgets as svc_loads.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'chargeline_loads') THEN
        CREATE ROLE chargeline_loads NOLOGIN;
    END IF;
END $$;
GRANT SELECT ON schema_migrations, sites, controllers, outlets, site_caps, controller_status
    TO chargeline_loads;
GRANT SELECT (charge_id, controller_id, outlet_no, state, requested_at, expected_start_at),
      UPDATE (expected_start_at) ON charges TO chargeline_loads;
GRANT SELECT, INSERT, DELETE ON site_load TO chargeline_loads;
-- The gateway's operator API sets caps and shows the site's load.
GRANT SELECT, INSERT, UPDATE ON site_caps TO chargeline_gateway;
GRANT SELECT ON site_load TO chargeline_gateway;
GRANT SELECT ON site_caps, site_load TO chargeline_analyst;

ALTER TABLE mqtt_identities DROP CONSTRAINT mqtt_identities_role_check;
ALTER TABLE mqtt_identities
    ADD CONSTRAINT mqtt_identities_role_check
        CHECK (role IN ('controller', 'ingest', 'gateway', 'ocpp', 'station', 'loads'));
