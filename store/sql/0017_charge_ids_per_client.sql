-- Charge ids are each client's own (security review, finding 7). A partner's id is kept as
-- partner_charge_id, unique per client; charge_id, the key the rest of the system (the
-- commands, the edge, the outbox) uses, is derived from the pair by the gateway
-- (ingest/charges.internal_id), so two partners may use the same id without meeting,
-- and nobody can take, or learn of, another partner's ids. Charges recorded before this
-- migration keep their key; their partner id is the key they had.
ALTER TABLE charges ADD COLUMN partner_charge_id text;
UPDATE charges SET partner_charge_id = charge_id;
ALTER TABLE charges ALTER COLUMN partner_charge_id SET NOT NULL;
CREATE UNIQUE INDEX charges_per_client ON charges (client_id, partner_charge_id);
