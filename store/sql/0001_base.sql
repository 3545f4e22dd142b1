-- Registry, raw readings, batch tracking, dead letters. Plain SQL shared by both flavours.

CREATE TABLE sites (
    site_id            text PRIMARY KEY,
    name               text NOT NULL,
    location           text NOT NULL DEFAULT '',
    timezone           text NOT NULL DEFAULT 'UTC',
    contract_current_a real NOT NULL CHECK (contract_current_a > 0),
    tariff_per_kwh     numeric(12, 4) NOT NULL CHECK (tariff_per_kwh >= 0),
    currency           text NOT NULL DEFAULT 'JPY',
    updated_at         timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE controllers (
    controller_id  text PRIMARY KEY CHECK (controller_id ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
    site_id        text NOT NULL REFERENCES sites,
    -- the controller's main meter is counted in its site's main-meter totals
    has_main_meter boolean NOT NULL DEFAULT true,
    updated_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE outlets (
    outlet_id        text PRIMARY KEY,          -- what the QR code carries
    controller_id    text NOT NULL REFERENCES controllers,
    outlet_no        smallint NOT NULL CHECK (outlet_no BETWEEN 1 AND 8),
    rated_current_a  real NOT NULL CHECK (rated_current_a > 0),
    rise_threshold_a real NOT NULL CHECK (rise_threshold_a > 0),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (controller_id, outlet_no)
);

-- One row per outlet per minute. The key absorbs every redelivery.
CREATE TABLE outlet_readings (
    controller_id text NOT NULL,
    outlet_no     smallint NOT NULL,
    minute        timestamptz NOT NULL,
    energy_wh     double precision NOT NULL,
    voltage_v     real NOT NULL,
    current_a     real NOT NULL,
    breaker_on    boolean NOT NULL,
    PRIMARY KEY (controller_id, outlet_no, minute)
);

CREATE TABLE main_meter_readings (
    controller_id text NOT NULL,
    minute        timestamptz NOT NULL,
    energy_wh     double precision NOT NULL,
    PRIMARY KEY (controller_id, minute)
);

-- Every meter batch committed, by the edge's sequence number.
CREATE TABLE meter_batches (
    controller_id text NOT NULL,
    seq           bigint NOT NULL,
    frames        smallint NOT NULL,
    first_minute  timestamptz NOT NULL,
    last_minute   timestamptz NOT NULL,
    received_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (controller_id, seq)
);

-- Missing sequence numbers between batches that did arrive: what operators look at.
CREATE VIEW meter_seq_gaps AS
SELECT controller_id, seq + 1 AS missing_from, next_seq - 1 AS missing_to,
       next_seq - seq - 1 AS missing_batches
FROM (
    SELECT controller_id, seq, lead(seq) OVER (PARTITION BY controller_id ORDER BY seq) AS next_seq
    FROM meter_batches
) s
WHERE next_seq > seq + 1;

CREATE TABLE controller_status (
    controller_id  text PRIMARY KEY,
    online         boolean,
    presence_since timestamptz,
    presence_at    timestamptz,
    firmware       text,
    started_at     timestamptz,
    outlets        jsonb,
    state_at       timestamptz
);

CREATE TABLE edge_events (
    id            bigserial PRIMARY KEY,
    controller_id text NOT NULL,
    at            timestamptz NOT NULL,
    kind          text NOT NULL,
    outlet_no     smallint NOT NULL,
    generation    bigint NOT NULL,
    current_a     real NOT NULL,
    breaker_on    boolean NOT NULL,
    detail        text NOT NULL,
    received_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (controller_id, at, kind, outlet_no)
);

-- Payloads that could not be used, kept byte for byte with the reason.
CREATE TABLE dead_letters (
    id            bigserial PRIMARY KEY,
    received_at   timestamptz NOT NULL DEFAULT now(),
    topic         text NOT NULL,
    controller_id text,
    reason        text NOT NULL,
    payload       bytea NOT NULL
);
CREATE INDEX dead_letters_received_at ON dead_letters (received_at);

-- Tell listeners (ingest's registry cache) that the registry changed.
CREATE FUNCTION notify_registry_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('chargeline_registry', TG_TABLE_NAME);
    RETURN NULL;
END $$;
CREATE TRIGGER controllers_changed AFTER INSERT OR UPDATE OR DELETE ON controllers
    FOR EACH STATEMENT EXECUTE FUNCTION notify_registry_changed();
CREATE TRIGGER outlets_changed AFTER INSERT OR UPDATE OR DELETE ON outlets
    FOR EACH STATEMENT EXECUTE FUNCTION notify_registry_changed();
