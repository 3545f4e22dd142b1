-- Desired states sent to outlets: the generation counter and the audit trail.

CREATE TABLE outlet_generations (
    controller_id text NOT NULL,
    outlet_no     smallint NOT NULL,
    generation    bigint NOT NULL,
    PRIMARY KEY (controller_id, outlet_no)
);

-- Who asked what of which outlet, when, and what the edge answered.
CREATE TABLE commands (
    controller_id text NOT NULL,
    outlet_no     smallint NOT NULL,
    generation    bigint NOT NULL,
    turn_on       boolean NOT NULL,
    charge_id     text,
    end_at        timestamptz,
    issued_at     timestamptz NOT NULL,
    issued_by     text NOT NULL,          -- an OAuth2 client id, or 'chargeline' for timers
    outcome       text,                   -- applied, stale, expired, breaker_failed, refused_offline
    breaker_on    boolean,
    acked_at      timestamptz,
    PRIMARY KEY (controller_id, outlet_no, generation)
);

CREATE INDEX commands_charge ON commands (charge_id) WHERE charge_id IS NOT NULL;
