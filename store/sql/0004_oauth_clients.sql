-- Partner applications (OAuth2 clients). Secrets are random 256-bit values shown once;
-- only their SHA-256 is stored (a slow KDF adds nothing for a secret nobody chose).

CREATE TABLE oauth_clients (
    client_id      text PRIMARY KEY,
    name           text NOT NULL,
    secret_sha256  bytea NOT NULL,
    scopes         text[] NOT NULL,
    webhook_url    text,
    -- key for the HMAC-SHA256 signature on webhooks; the partner keeps a copy
    webhook_secret text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    disabled_at    timestamptz
);

CREATE FUNCTION chargeline_notify_clients() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('chargeline_clients', '');
    RETURN NULL;
END $$;

CREATE TRIGGER oauth_clients_changed AFTER INSERT OR UPDATE OR DELETE ON oauth_clients
    FOR EACH STATEMENT EXECUTE FUNCTION chargeline_notify_clients();
