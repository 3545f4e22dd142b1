-- meter_seq_gaps at the contract's limits: seq may be up to 2^63 - 1 (schemas/messages.py
-- MAX_SEQ), and `seq + 1` on the last batch overflowed bigint for every query of the view.
-- The difference of two stored seqs cannot overflow; seq + 1 is only taken below a gap.
CREATE OR REPLACE VIEW meter_seq_gaps AS
SELECT controller_id, seq + 1 AS missing_from, next_seq - 1 AS missing_to,
       next_seq - seq - 1 AS missing_batches
FROM (
    SELECT controller_id, seq, lead(seq) OVER (PARTITION BY controller_id ORDER BY seq) AS next_seq
    FROM meter_batches
) s
WHERE next_seq - seq > 1;
