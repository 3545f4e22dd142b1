-- Each identity accepts exactly one client certificate: the SHA-256 of its DER, recorded
-- when `chargeline broker pki client NAME` issues it. Revoking clears it, so a certificate
-- issued before a revocation is refused for the rest of its validity, even after the
-- identity is issued again. Certificates issued before this migration are not bound:
-- issue them again (the broker refuses them and says so).
ALTER TABLE mqtt_identities ADD COLUMN cert_sha256 bytea
    CHECK (cert_sha256 IS NULL OR length(cert_sha256) = 32);
