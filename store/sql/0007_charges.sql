-- Charges: one row per partner charge, moved through ingest/lifecycle.py's states.

CREATE TABLE charges (
    charge_id         text PRIMARY KEY,
    client_id         text NOT NULL REFERENCES oauth_clients,
    outlet_id         text NOT NULL REFERENCES outlets,
    controller_id     text NOT NULL,
    outlet_no         smallint NOT NULL,
    request_sha256    bytea NOT NULL,      -- the start request, for idempotent retries
    state             text NOT NULL,
    start_generation  bigint NOT NULL,
    stop_generation   bigint,
    end_at            timestamptz NOT NULL,
    requested_at      timestamptz NOT NULL DEFAULT now(),
    started_at        timestamptz,
    rise_at           timestamptz,
    stopped_at        timestamptz,
    stop_reason       text,
    failure           text,
    -- the readings the energy figure comes from, kept for audits
    first_minute      timestamptz,
    first_energy_wh   double precision,
    last_minute       timestamptz,
    last_energy_wh    double precision,
    energy_wh         double precision NOT NULL DEFAULT 0,
    reported          boolean NOT NULL DEFAULT false,
    updated_at        timestamptz NOT NULL DEFAULT now()
);

-- An outlet runs one charge at a time: a second start finds it busy.
CREATE UNIQUE INDEX charges_one_active_per_outlet ON charges (outlet_id)
    WHERE state IN ('requested', 'on', 'drawing', 'stopping');
CREATE INDEX charges_by_controller ON charges (controller_id, outlet_no, requested_at);

-- ingest/current_rise.py's state per outlet, so a crossing fires once across restarts.
CREATE TABLE outlet_current_state (
    controller_id text NOT NULL,
    outlet_no     smallint NOT NULL,
    high          boolean NOT NULL,
    seen_at       double precision NOT NULL,
    PRIMARY KEY (controller_id, outlet_no)
);
