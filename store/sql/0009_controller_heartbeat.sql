-- The application heartbeat: the embedded broker does not enforce keepalive, so a hung
-- controller's connection may never close and its will never fire. Ingest records when
-- it last heard from each controller (meter batches, events, acks) and marks a controller
-- silent for longer than silence_timeout_s offline; hearing from it again brings it back.

ALTER TABLE controller_status ADD COLUMN heard_at timestamptz;
-- true while offline because of silence (not because of its will)
ALTER TABLE controller_status ADD COLUMN silent boolean NOT NULL DEFAULT false;
