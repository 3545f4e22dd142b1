-- Status requests: a partner asks for a fresh sample of one outlet; the edge answers with
-- an edge event of kind 'status' whose detail is the request id (schemas/messages.py).

-- Every edge event now carries the outlet's reading at that moment.
ALTER TABLE edge_events ADD COLUMN energy_wh double precision;
ALTER TABLE edge_events ADD COLUMN voltage_v real;

CREATE TABLE status_requests (
    request_id    text PRIMARY KEY,
    client_id     text NOT NULL REFERENCES oauth_clients,
    outlet_id     text NOT NULL REFERENCES outlets,
    controller_id text NOT NULL,
    outlet_no     smallint NOT NULL,
    requested_at  timestamptz NOT NULL DEFAULT now(),
    -- set once: by the edge's answer, or by the gateway when none came in time
    answered_at   timestamptz,
    answer        text                  -- 'fresh' (from the edge) or 'last_reading'
);
CREATE INDEX status_requests_open ON status_requests (requested_at) WHERE answered_at IS NULL;
