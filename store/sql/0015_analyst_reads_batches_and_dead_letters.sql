-- docs/analytics.md lists meter_batches and dead_letters for analysts. Dead letters are
-- readable without their payload bytes: a payload may hold anything a device (or an
-- attacker) sent, including secrets; operators read it with their own role.
GRANT SELECT ON meter_batches TO chargeline_analyst;
GRANT SELECT (id, received_at, topic, controller_id, reason) ON dead_letters
    TO chargeline_analyst;
