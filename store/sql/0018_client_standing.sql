-- Revocation that takes effect at once (security review, finding 9). A client is active,
-- disabled (no tokens, no webhooks; `clients enable` brings it back) or removed (for
-- good). tokens_valid_after: the API refuses any token issued before it, so disabling,
-- removing or rotating the secret ends every token already out, within seconds (the
-- gateway listens for changes), instead of at the tokens' expiry.
ALTER TABLE oauth_clients
    ADD COLUMN tokens_valid_after timestamptz NOT NULL DEFAULT '1970-01-01 00:00:00+00',
    ADD COLUMN removed_at timestamptz;
-- Until now "remove" was the only way to disable a client.
UPDATE oauth_clients SET removed_at = disabled_at, tokens_valid_after = disabled_at
WHERE disabled_at IS NOT NULL;
