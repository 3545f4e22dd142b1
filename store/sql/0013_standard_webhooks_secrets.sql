-- Webhook secrets in the Standard Webhooks form: "whsec_" and the key's bytes in base64.
-- An existing secret keeps its key (its UTF-8 bytes), so a partner's signatures verify
-- with "whsec_" + base64(old secret): see docs/partner-api.md, "Moving to Standard Webhooks".
UPDATE oauth_clients
SET webhook_secret = 'whsec_' || replace(encode(convert_to(webhook_secret, 'UTF8'), 'base64'), E'\n', '')
WHERE webhook_secret NOT LIKE 'whsec\_%';

-- A rotated webhook secret keeps signing beside the new one until this time.
ALTER TABLE oauth_clients
    ADD COLUMN previous_webhook_secret text,
    ADD COLUMN previous_webhook_secret_until timestamptz;
