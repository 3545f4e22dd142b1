-- Events for partners, written in the same transaction as the facts they come from and
-- delivered by cloud_gateway/webhooks.py: at least once, in order per charge, signed.

CREATE TABLE webhook_outbox (
    event_id        bigserial PRIMARY KEY,  -- also the delivery order
    public_id       text NOT NULL UNIQUE,   -- what the partner de-duplicates on
    client_id       text NOT NULL REFERENCES oauth_clients,
    charge_id       text,                   -- events of one charge go out in order
    kind            text NOT NULL,
    body            jsonb NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text,
    delivered_at    timestamptz,
    gave_up_at      timestamptz
);

CREATE INDEX webhook_outbox_due ON webhook_outbox (next_attempt_at)
    WHERE delivered_at IS NULL AND gave_up_at IS NULL;
CREATE INDEX webhook_outbox_charge ON webhook_outbox (charge_id, event_id)
    WHERE delivered_at IS NULL AND gave_up_at IS NULL;

CREATE FUNCTION chargeline_notify_outbox() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('chargeline_outbox', '');
    RETURN NULL;
END $$;

CREATE TRIGGER webhook_outbox_added AFTER INSERT ON webhook_outbox
    FOR EACH STATEMENT EXECUTE FUNCTION chargeline_notify_outbox();
