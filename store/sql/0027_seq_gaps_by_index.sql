-- The gaps trigger (0024) joined its controllers' seq ranges to meter_batches, and the
-- plan PL/pgSQL settled on for that join read the whole table: a write of one batch from
-- each of 500 controllers took 7 ms with 40,000 batches stored and 27 ms with 200,000,
-- growing with the history. Each range is now read through the primary key on its own
-- (LATERAL), whatever the table's size.
CREATE OR REPLACE FUNCTION chargeline_seq_gaps_add() RETURNS trigger LANGUAGE plpgsql AS $$
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
    SELECT r.controller_id, s.seq + 1, s.next_seq - 1
    FROM unnest(ids, froms, tos) AS r(controller_id, from_seq, to_seq)
    CROSS JOIN LATERAL (
        SELECT m.seq, lead(m.seq) OVER (ORDER BY m.seq) AS next_seq
        FROM meter_batches m
        WHERE m.controller_id = r.controller_id AND m.seq BETWEEN r.from_seq AND r.to_seq
    ) s
    WHERE s.next_seq - s.seq > 1;
    RETURN NULL;
END $$;

-- And whatever the statistics say: a plan made while meter_batches was empty (a new
-- installation, a benchmark) stays cached in ingest's session as the table grows, and a
-- sequential scan of it in every write is what made the 0024 trigger cost more with
-- every batch stored. Every statement above has an index path.
ALTER FUNCTION chargeline_seq_gaps_add() SET enable_seqscan = off;
