-- A client's usage per outlet and month (the site's calendar), kept as charges stop: the
-- partner's GET /v1/usage reads a few rows here instead of summing a month of charges.
-- The sums are those of the stopped charges' own records (energy_kwh, fee), so the
-- figures are the same as summing the charges, to the cent; tests/test_usage_months.py
-- compares the two after every kind of change.
CREATE TABLE usage_monthly (
    client_id  text NOT NULL,
    outlet_id  text NOT NULL,
    month      date NOT NULL,      -- first day, in the outlet's site's time zone
    charges    bigint NOT NULL,
    energy_kwh numeric NOT NULL,
    fee        numeric NOT NULL,
    PRIMARY KEY (client_id, month, outlet_id)
);

-- The month a charge stopped in, in its site's calendar (a plain expression, inlined
-- wherever it is used).
CREATE FUNCTION chargeline_usage_month(stopped timestamptz, timezone text) RETURNS date
LANGUAGE sql IMMUTABLE AS $$
    SELECT date_trunc('month', stopped AT TIME ZONE timezone)::date
$$;

-- A charge's figures added to (sign 1) or taken from (sign -1) its month. plpgsql, so its
-- statement is planned once per session, not once per charge.
CREATE FUNCTION chargeline_usage_add(
    client text, outlet text, stopped timestamptz, kwh numeric, amount numeric, sign integer
) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO usage_monthly AS u (client_id, outlet_id, month, charges, energy_kwh, fee)
    SELECT client, outlet, chargeline_usage_month(stopped, s.timezone), sign,
           sign * kwh, sign * amount
    FROM outlets o JOIN controllers k USING (controller_id) JOIN sites s USING (site_id)
    WHERE o.outlet_id = outlet
    ON CONFLICT (client_id, month, outlet_id) DO UPDATE SET
        charges = u.charges + excluded.charges,
        energy_kwh = u.energy_kwh + excluded.energy_kwh,
        fee = u.fee + excluded.fee;
END $$;

-- A stopped charge counts; a change to one (the closing reading, a later correction)
-- moves its old figures out and its new ones in.
CREATE FUNCTION chargeline_usage_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') AND OLD.state = 'stopped' THEN
        PERFORM chargeline_usage_add(OLD.client_id, OLD.outlet_id, OLD.stopped_at,
                                     OLD.energy_kwh, OLD.fee, -1);
    END IF;
    IF TG_OP IN ('UPDATE', 'INSERT') AND NEW.state = 'stopped' THEN
        PERFORM chargeline_usage_add(NEW.client_id, NEW.outlet_id, NEW.stopped_at,
                                     NEW.energy_kwh, NEW.fee, 1);
    END IF;
    RETURN NULL;
END $$;
-- Ingest rewrites open charges with every write: those updates do not fire this.
CREATE TRIGGER charges_usage_insert AFTER INSERT ON charges
    FOR EACH ROW WHEN (NEW.state = 'stopped') EXECUTE FUNCTION chargeline_usage_changed();
CREATE TRIGGER charges_usage_update AFTER UPDATE ON charges
    FOR EACH ROW WHEN ((OLD.state = 'stopped' OR NEW.state = 'stopped')
        AND (OLD.state, OLD.stopped_at, OLD.energy_kwh, OLD.fee, OLD.client_id, OLD.outlet_id)
            IS DISTINCT FROM
            (NEW.state, NEW.stopped_at, NEW.energy_kwh, NEW.fee, NEW.client_id, NEW.outlet_id))
    EXECUTE FUNCTION chargeline_usage_changed();
CREATE TRIGGER charges_usage_delete AFTER DELETE ON charges
    FOR EACH ROW WHEN (OLD.state = 'stopped') EXECUTE FUNCTION chargeline_usage_changed();

-- The months of a site's charges follow its time zone: a new zone (or an outlet moved to
-- another controller) recounts those charges.
CREATE FUNCTION chargeline_usage_recount(outlet_ids text[]) RETURNS void
LANGUAGE sql AS $$
    DELETE FROM usage_monthly WHERE outlet_id = ANY(outlet_ids);
    INSERT INTO usage_monthly (client_id, outlet_id, month, charges, energy_kwh, fee)
    SELECT c.client_id, c.outlet_id, chargeline_usage_month(c.stopped_at, s.timezone),
           count(*), sum(c.energy_kwh), sum(c.fee)
    FROM charges c JOIN outlets o USING (outlet_id)
    JOIN controllers k ON k.controller_id = o.controller_id JOIN sites s USING (site_id)
    WHERE c.state = 'stopped' AND c.outlet_id = ANY(outlet_ids)
    GROUP BY 1, 2, 3;
$$;
CREATE FUNCTION chargeline_usage_site_moved() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'sites' THEN
        PERFORM chargeline_usage_recount(ARRAY(
            SELECT o.outlet_id FROM outlets o JOIN controllers k USING (controller_id)
            WHERE k.site_id = NEW.site_id));
    ELSE
        PERFORM chargeline_usage_recount(ARRAY(
            SELECT outlet_id FROM outlets WHERE controller_id = NEW.controller_id));
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER sites_usage_timezone AFTER UPDATE OF timezone ON sites
    FOR EACH ROW WHEN (OLD.timezone IS DISTINCT FROM NEW.timezone)
    EXECUTE FUNCTION chargeline_usage_site_moved();
CREATE TRIGGER controllers_usage_site AFTER UPDATE OF site_id ON controllers
    FOR EACH ROW WHEN (OLD.site_id IS DISTINCT FROM NEW.site_id)
    EXECUTE FUNCTION chargeline_usage_site_moved();

-- What is there already.
INSERT INTO usage_monthly (client_id, outlet_id, month, charges, energy_kwh, fee)
SELECT c.client_id, c.outlet_id, chargeline_usage_month(c.stopped_at, s.timezone),
       count(*), sum(c.energy_kwh), sum(c.fee)
FROM charges c JOIN outlets o USING (outlet_id)
JOIN controllers k ON k.controller_id = o.controller_id JOIN sites s USING (site_id)
WHERE c.state = 'stopped'
GROUP BY 1, 2, 3;

GRANT SELECT ON usage_monthly TO chargeline_analyst;
-- The triggers run with the rights of whoever stops a charge.
GRANT SELECT, INSERT, UPDATE ON usage_monthly TO chargeline_gateway, chargeline_ingest;
