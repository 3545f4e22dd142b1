-- The operator console (issue 18): operators who log in, their sessions, and every action
-- they take. Served by the gateway, so its role reads and writes these; an operator's
-- password is an argon2id hash, a session is kept as the SHA-256 of its cookie.
CREATE TABLE operators (
    name          text PRIMARY KEY CHECK (name ~ '^[a-z0-9][a-z0-9._-]{0,62}$'),
    password_hash text NOT NULL,
    role          text NOT NULL CHECK (role IN ('admin', 'read-only')),
    created_at    timestamptz NOT NULL DEFAULT now(),
    disabled_at   timestamptz
);

CREATE TABLE operator_sessions (
    token_sha256 bytea PRIMARY KEY,
    operator     text NOT NULL REFERENCES operators ON DELETE CASCADE,
    csrf_token   text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL
);
CREATE INDEX operator_sessions_expiry ON operator_sessions (expires_at);

-- Who did what, from the console (and `chargeline charges stop`, issued_by 'operator').
CREATE TABLE operator_actions (
    id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at       timestamptz NOT NULL DEFAULT now(),
    operator text NOT NULL,
    action   text NOT NULL,
    target   text NOT NULL,
    detail   text
);
CREATE INDEX operator_actions_recent ON operator_actions (at DESC);

GRANT SELECT (name, password_hash, role, disabled_at) ON operators TO chargeline_gateway;
GRANT SELECT, INSERT, DELETE ON operator_sessions TO chargeline_gateway;
GRANT SELECT, INSERT ON operator_actions TO chargeline_gateway;
-- The console names each charge's client.
GRANT SELECT (name) ON oauth_clients TO chargeline_gateway;

-- Alarms the console shows are read from the tables that hold their facts; an operator's
-- acknowledgement is kept by the alarm's key (cloud_gateway/console/alarms.py).
CREATE TABLE alarm_acks (
    key      text PRIMARY KEY,
    acked_by text NOT NULL,
    acked_at timestamptz NOT NULL DEFAULT now()
);
GRANT SELECT, INSERT ON alarm_acks TO chargeline_gateway;
GRANT SELECT ON edge_events, meter_seq_gap_ranges TO chargeline_gateway;
GRANT SELECT (id, received_at, topic, controller_id, reason) ON dead_letters TO chargeline_gateway;
GRANT SELECT (event_id, client_id, attempts, last_error, created_at, delivered_at, gave_up_at)
    ON webhook_outbox TO chargeline_gateway;

-- The console's Sites page: each site's energy today and this month.
GRANT SELECT ON energy_site_daily, energy_site_monthly TO chargeline_gateway;

-- The console's outlet page: put an outlet out of service and back.
GRANT UPDATE (in_service) ON outlets TO chargeline_gateway;

-- The console's charge page: the webhooks sent about it (never their bodies' secrets).
GRANT SELECT (kind, charge_id) ON webhook_outbox TO chargeline_gateway;
