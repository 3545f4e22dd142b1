-- Ingest feeds every write's readings to the open charges of the controllers it heard
-- from (charging/charges.py, open_charges): this finds them without reading a
-- controller's history of charges. The predicate is charges.OPEN_SQL's.
CREATE INDEX charges_open ON charges (controller_id)
    WHERE state IN ('drawing', 'on', 'requested', 'stopping')
       OR (state = 'stopped' AND NOT reported);

-- Ingest rewrites an open charge's meter columns with every write that has its readings.
-- Room in each page lets those updates stay in the page (HOT: none of the columns they
-- change is indexed), so no index of the table is written; packed pages made every such
-- update insert into all eight indexes. Applies to pages filled from now on; the rise
-- detectors' rows are rewritten as often.
ALTER TABLE charges SET (fillfactor = 50);
ALTER TABLE outlet_current_state SET (fillfactor = 50);
