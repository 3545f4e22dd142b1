-- OCPP charging stations (issue 15). A station is one more controller: its row in
-- `controllers` and its connectors' rows in `outlets` are what ingest and the gateway see.
-- These tables hold what only the OCPP bridge (`chargeline ocpp`) needs.

-- The OCPP station id (what the charger's URL ends with) beside the controller id it is
-- known by everywhere else. OCPP ids are often upper case: the mapping is the registry's,
-- never a lower-cased guess.
CREATE TABLE ocpp_stations (
    station_id    text PRIMARY KEY CHECK (station_id ~ '^[A-Za-z0-9._:*+|@-]{1,48}$'),
    controller_id text NOT NULL UNIQUE REFERENCES controllers ON DELETE CASCADE,
    ocpp_version  text NOT NULL CHECK (ocpp_version IN ('1.6', '2.0.1')),
    -- From the station's last BootNotification, for the operator.
    vendor        text,
    model         text,
    serial_number text,
    firmware      text,
    booted_at     timestamptz,
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- Each connector is an outlet of the station's controller (outlet_no 1..8).
CREATE TABLE ocpp_connectors (
    controller_id  text NOT NULL REFERENCES controllers ON DELETE CASCADE,
    outlet_no      smallint NOT NULL CHECK (outlet_no BETWEEN 1 AND 8),
    evse_id        integer NOT NULL CHECK (evse_id >= 1),
    connector_id   integer NOT NULL CHECK (connector_id >= 1),
    current_type   text NOT NULL CHECK (current_type IN ('AC', 'DC')),
    rated_power_kw real CHECK (rated_power_kw > 0),
    PRIMARY KEY (controller_id, outlet_no),
    UNIQUE (controller_id, evse_id, connector_id)
);

-- RFID cards a resident may start a charge with locally, and the partner client billed.
CREATE TABLE rfid_tags (
    id_tag     text PRIMARY KEY CHECK (id_tag ~ '^[^\x00-\x1f\x7f]{1,36}$'),
    client_id  text NOT NULL,
    valid      boolean NOT NULL DEFAULT true,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Transactions as the stations report them. A 1.6 station's transaction id is ours
-- (StartTransaction's answer), keyed on what the station sent, so a retried
-- StartTransaction gets the same id; a 2.0.1 station's is its own.
CREATE TABLE ocpp_transactions (
    controller_id  text NOT NULL REFERENCES controllers ON DELETE CASCADE,
    transaction_id text NOT NULL,
    outlet_no      smallint NOT NULL,
    id_tag         text,
    charge_id      text,
    started_at     timestamptz NOT NULL,
    meter_start_wh double precision,
    stopped_at     timestamptz,
    meter_stop_wh  double precision,
    stop_reason    text,
    PRIMARY KEY (controller_id, transaction_id)
);
CREATE SEQUENCE ocpp_transaction_ids AS integer;

-- Every frame in and out, as the bytes said it (frames the ocpp package cannot parse
-- included), kept for `frame_retention_days` (the bridge deletes older ones).
CREATE TABLE ocpp_frames (
    station_id text NOT NULL,
    at         timestamptz NOT NULL,
    direction  text NOT NULL CHECK (direction IN ('in', 'out')),
    frame      text NOT NULL
);
CREATE INDEX ocpp_frames_by_station ON ocpp_frames (station_id, at);
CREATE INDEX ocpp_frames_by_time ON ocpp_frames (at);

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'chargeline_ocpp') THEN
        CREATE ROLE chargeline_ocpp NOLOGIN;
    END IF;
END $$;
GRANT SELECT ON schema_migrations, sites, controllers, outlets, ocpp_connectors, rfid_tags
    TO chargeline_ocpp;
GRANT SELECT, UPDATE ON ocpp_stations TO chargeline_ocpp;
GRANT SELECT, INSERT, UPDATE ON ocpp_transactions TO chargeline_ocpp;
GRANT USAGE ON SEQUENCE ocpp_transaction_ids TO chargeline_ocpp;
GRANT SELECT, INSERT, DELETE ON ocpp_frames TO chargeline_ocpp;
-- Station passwords are checked like controllers' (HTTP Basic): the hashes, nothing else.
GRANT SELECT (name, role, argon2, revoked_at, cert_sha256) ON mqtt_identities TO chargeline_ocpp;
-- Analysts may read what a charger said, never a password.
GRANT SELECT ON ocpp_stations, ocpp_connectors, ocpp_transactions, ocpp_frames
    TO chargeline_analyst;

-- Two more kinds of identity: the bridge's service identity (svc_ocpp), and each station's
-- (named by its controller id), which its OCPP connection proves and the broker refuses.
ALTER TABLE mqtt_identities DROP CONSTRAINT mqtt_identities_role_check;
ALTER TABLE mqtt_identities DROP CONSTRAINT mqtt_identities_check;
ALTER TABLE mqtt_identities
    ADD CONSTRAINT mqtt_identities_role_check
        CHECK (role IN ('controller', 'ingest', 'gateway', 'ocpp', 'station')),
    ADD CONSTRAINT mqtt_identities_check
        CHECK ((role IN ('controller', 'station')) = (name !~ '^svc_'));
-- The broker lets the bridge speak for stations only: it reads which controllers they are.
GRANT SELECT (controller_id) ON ocpp_stations TO chargeline_broker;

-- Wire version 2 (DC fast chargers): a reading may carry the power drawn and the car's
-- state of charge. Older edges send neither: the columns stay NULL for them.
ALTER TABLE outlet_readings
    ADD COLUMN power_w     real CHECK (power_w >= 0),
    ADD COLUMN soc_percent real CHECK (soc_percent BETWEEN 0 AND 100);

-- A resident's card at a station starts a charge billed to the card's client: the bridge
-- records it as the gateway records a partner's start (charging.commands.send_start and
-- charging.charges.create), with the triggers' tables those writes touch.
GRANT SELECT ON controller_status, site_tariffs TO chargeline_ocpp;
GRANT SELECT, INSERT, UPDATE ON charges, commands, outlet_generations, outlet_current_state
    TO chargeline_ocpp;
GRANT SELECT, INSERT, UPDATE, DELETE ON availability_changes TO chargeline_ocpp;
GRANT SELECT, INSERT, UPDATE ON usage_monthly TO chargeline_ocpp;
