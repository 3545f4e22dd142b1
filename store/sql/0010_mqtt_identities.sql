-- Who may connect to the broker (broker/identities.py). One row per identity: a controller
-- (name = controller id) or a service (name svc_…). Passwords are never stored: argon2 is
-- what the embedded broker checks; pbkdf2 is the same password in Mosquitto's "$7$" form,
-- for the exported password file and EMQX. A row with neither authenticates by client
-- certificate only. Revoking keeps the row, so the audit trail stays.

CREATE TABLE mqtt_identities (
    name        text PRIMARY KEY CHECK (
                    name ~ '^[a-z0-9][a-z0-9-]{0,62}$' OR name ~ '^svc_[a-z0-9-]{1,40}$'),
    role        text NOT NULL CHECK (role IN ('controller', 'ingest', 'gateway')),
    argon2      text,
    pbkdf2      text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    rotated_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz,
    CHECK ((role = 'controller') = (name !~ '^svc_'))
);

-- The broker listens and reloads, so rotating or revoking takes effect without a restart.
CREATE FUNCTION mqtt_identities_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('mqtt_identities', COALESCE(NEW.name, OLD.name));
    RETURN NULL;
END $$;

CREATE TRIGGER mqtt_identities_changed AFTER INSERT OR UPDATE OR DELETE ON mqtt_identities
    FOR EACH ROW EXECUTE FUNCTION mqtt_identities_notify();
