-- meter_seq_gaps kept as batches are stored: the view read every batch ever received (a
-- window over all of meter_batches, seconds at a fleet's years), and gaps are rare. A
-- trigger now recomputes, for each controller in a statement's new batches, the gaps
-- between the batches just below and just above them, and the view reads the result.
-- Same columns, same numbers (tests/test_store.py compares them with the batches).
CREATE TABLE meter_seq_gap_ranges (
    controller_id text NOT NULL,
    missing_from  bigint NOT NULL,
    missing_to    bigint NOT NULL,
    PRIMARY KEY (controller_id, missing_from)
);

-- For each controller among the new batches: the range from the stored batch just below
-- the lowest new one to the stored batch just above the highest (or the new ones' own
-- ends). Only gaps inside it can have changed.
CREATE FUNCTION chargeline_seq_gaps_add() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    ids text[];
    froms bigint[];
    tos bigint[];
BEGIN
    SELECT array_agg(a.controller_id),
           array_agg(coalesce((SELECT max(m.seq) FROM meter_batches m
                               WHERE m.controller_id = a.controller_id AND m.seq < a.low),
                              a.low)),
           array_agg(coalesce((SELECT min(m.seq) FROM meter_batches m
                               WHERE m.controller_id = a.controller_id AND m.seq > a.high),
                              a.high))
    INTO ids, froms, tos
    FROM (SELECT controller_id, min(seq) AS low, max(seq) AS high
          FROM added GROUP BY controller_id) a;

    DELETE FROM meter_seq_gap_ranges g
    USING unnest(ids, froms, tos) AS r(controller_id, from_seq, to_seq)
    WHERE g.controller_id = r.controller_id
      AND g.missing_from > r.from_seq AND g.missing_from <= r.to_seq;

    -- The difference of two stored seqs cannot overflow; seq + 1 is only taken below a
    -- gap (seq may be up to 2^63 - 1: schemas/messages.py MAX_SEQ).
    INSERT INTO meter_seq_gap_ranges (controller_id, missing_from, missing_to)
    SELECT controller_id, seq + 1, next_seq - 1
    FROM (
        SELECT m.controller_id, m.seq,
               lead(m.seq) OVER (PARTITION BY m.controller_id ORDER BY m.seq) AS next_seq
        FROM unnest(ids, froms, tos) AS r(controller_id, from_seq, to_seq)
        JOIN meter_batches m ON m.controller_id = r.controller_id
                            AND m.seq BETWEEN r.from_seq AND r.to_seq
    ) s
    WHERE next_seq - seq > 1;
    RETURN NULL;
END $$;

INSERT INTO meter_seq_gap_ranges (controller_id, missing_from, missing_to)
SELECT controller_id, missing_from, missing_to FROM meter_seq_gaps;

CREATE TRIGGER meter_batches_seq_gaps AFTER INSERT ON meter_batches
    REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION chargeline_seq_gaps_add();

CREATE OR REPLACE VIEW meter_seq_gaps AS
SELECT controller_id, missing_from, missing_to, missing_to - missing_from + 1 AS missing_batches
FROM meter_seq_gap_ranges;

GRANT SELECT ON meter_seq_gap_ranges TO chargeline_analyst;
GRANT SELECT, INSERT, DELETE ON meter_seq_gap_ranges TO chargeline_ingest;
