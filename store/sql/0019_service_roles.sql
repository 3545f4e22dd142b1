-- Least privilege (security review, finding 14). Each service gets a group role with the
-- grants it needs and no more; the operator creates a login for each service inside its
-- group (`chargeline db login NAME SERVICE`) and gives each service its own URL. The
-- schema's owner (the role that runs `chargeline db upgrade`) keeps everything else.
--
--   chargeline_broker    reads the MQTT identities (and nothing of the partners)
--   chargeline_auth      reads the partner clients' secret hashes, not webhook secrets
--   chargeline_gateway   the internet-facing API: charges, commands, status, readings;
--                        no MQTT credentials, no client secrets, no webhook secrets
--   chargeline_webhooks  the deliverer: the outbox and the webhook secrets
--   chargeline_ingest    readings, batches, events, charges, presence; no credentials
DO $$
DECLARE
    service text;
BEGIN
    FOREACH service IN ARRAY ARRAY['broker', 'auth', 'gateway', 'webhooks', 'ingest'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'chargeline_' || service) THEN
            EXECUTE format('CREATE ROLE %I NOLOGIN', 'chargeline_' || service);
        END IF;
    END LOOP;
END $$;

-- Every service checks the schema version at start (it never migrates under its role).
GRANT SELECT ON schema_migrations
    TO chargeline_broker, chargeline_auth, chargeline_gateway, chargeline_webhooks,
       chargeline_ingest;

GRANT SELECT ON mqtt_identities TO chargeline_broker;

GRANT SELECT (client_id, name, secret_sha256, scopes, webhook_url, disabled_at,
              tokens_valid_after)
    ON oauth_clients TO chargeline_auth;

GRANT SELECT ON sites, controllers, outlets, controller_status, outlet_readings
    TO chargeline_gateway;
GRANT SELECT, INSERT, UPDATE
    ON charges, commands, outlet_generations, status_requests, outlet_current_state
    TO chargeline_gateway;
GRANT INSERT ON webhook_outbox TO chargeline_gateway;
GRANT SELECT (client_id, scopes, webhook_url, disabled_at, tokens_valid_after) ON oauth_clients
    TO chargeline_gateway;

GRANT SELECT, UPDATE ON webhook_outbox TO chargeline_webhooks;
GRANT SELECT (client_id, webhook_url, webhook_secret, previous_webhook_secret,
              previous_webhook_secret_until, disabled_at) ON oauth_clients
    TO chargeline_webhooks;

GRANT SELECT, INSERT, UPDATE, DELETE
    ON sites, controllers, outlets, outlet_readings, main_meter_readings, meter_batches,
       controller_status, edge_events, dead_letters, charges, commands, outlet_generations,
       status_requests, outlet_current_state
    TO chargeline_ingest;
GRANT INSERT ON webhook_outbox TO chargeline_ingest;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO chargeline_ingest;
REVOKE SELECT ON mqtt_identities, oauth_clients FROM chargeline_ingest;
GRANT SELECT (client_id, scopes, webhook_url, disabled_at) ON oauth_clients TO chargeline_ingest;

GRANT USAGE ON ALL SEQUENCES IN SCHEMA public
    TO chargeline_gateway, chargeline_webhooks, chargeline_ingest;

-- With TimescaleDB, late readings refresh the continuous aggregates, which only their
-- owner may do (and not from a SECURITY DEFINER procedure, which TimescaleDB refuses):
-- there, ingest's login also needs the owner's role (docs/operations.md, "Security").
