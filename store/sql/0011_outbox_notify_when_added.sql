-- The outbox's NOTIFY wakes the webhook deliverer. As a statement trigger it fired for
-- every INSERT, also one that added no row: every charge step woke the deliverer for
-- nothing when its client has no webhook URL (events are written only for clients with
-- one: chargeline/outbox.py, ingest/charges.py). Now it fires when rows were added.

CREATE OR REPLACE FUNCTION chargeline_notify_outbox() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM added) THEN
        PERFORM pg_notify('chargeline_outbox', '');
    END IF;
    RETURN NULL;
END $$;

DROP TRIGGER webhook_outbox_added ON webhook_outbox;
CREATE TRIGGER webhook_outbox_added AFTER INSERT ON webhook_outbox
    REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION chargeline_notify_outbox();
