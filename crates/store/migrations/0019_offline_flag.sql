-- Which devices have an open "device offline" alarm, on the device row, so that the offline
-- sweep's search for silent devices reads only those not yet reported.
--
-- The sweep took the silent devices oldest first and skipped, one index probe each, those
-- with an open offline alarm. With tens of thousands of them open (a 100,000-tablet run's
-- churn, or a district's network outage) every pass, four a second on every node, read them
-- all again before it found one to report: it became PostgreSQL's busiest statement, and
-- reporting slowed as the outage grew. The alarms stay the truth: a trigger keeps the flag
-- equal to "an open offline alarm exists" on every path that opens, clears or removes one,
-- and the sweep still checks the alarms of the few devices it picks.
ALTER TABLE devices ADD COLUMN offline_alarm_open boolean NOT NULL DEFAULT false;

UPDATE devices d SET offline_alarm_open = true
WHERE EXISTS (SELECT 1 FROM alarms a
              WHERE a.device_id = d.id AND a.kind = 'DEVICE_OFFLINE' AND a.cleared_at IS NULL);

DROP INDEX devices_last_seen;
CREATE INDEX devices_silence ON devices (last_seen_at)
    WHERE revoked_at IS NULL AND NOT offline_alarm_open;

-- Once per statement, over the statement's changed alarms (a transition table): a sweep's
-- round of a hundred offline alarms is one update of their devices. The devices are found by
-- `= ANY (ARRAY(...))`, an index condition whatever the planner guesses of the transition table.
CREATE FUNCTION devices_offline_flag_opened() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE devices d SET offline_alarm_open = true
    WHERE d.id = ANY (ARRAY(SELECT n.device_id FROM new_alarms n
                            WHERE n.kind = 'DEVICE_OFFLINE' AND n.cleared_at IS NULL))
      AND NOT d.offline_alarm_open;
    RETURN NULL;
END
$$;

CREATE FUNCTION devices_offline_flag_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Every device one of whose offline alarms changed or went: its flag is recomputed.
    UPDATE devices d
    SET offline_alarm_open = NOT d.offline_alarm_open
    WHERE d.id = ANY (ARRAY(SELECT o.device_id FROM old_alarms o WHERE o.kind = 'DEVICE_OFFLINE'
                            UNION
                            SELECT n.device_id FROM new_alarms n WHERE n.kind = 'DEVICE_OFFLINE'))
      AND d.offline_alarm_open <> EXISTS (SELECT 1 FROM alarms a
                                          WHERE a.device_id = d.id AND a.kind = 'DEVICE_OFFLINE'
                                            AND a.cleared_at IS NULL);
    RETURN NULL;
END
$$;

CREATE FUNCTION devices_offline_flag_removed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE devices d SET offline_alarm_open = false
    WHERE d.id = ANY (ARRAY(SELECT o.device_id FROM old_alarms o WHERE o.kind = 'DEVICE_OFFLINE'))
      AND d.offline_alarm_open
      AND NOT EXISTS (SELECT 1 FROM alarms a
                      WHERE a.device_id = d.id AND a.kind = 'DEVICE_OFFLINE' AND a.cleared_at IS NULL);
    RETURN NULL;
END
$$;

CREATE TRIGGER alarms_offline_flag_opened AFTER INSERT ON alarms
    REFERENCING NEW TABLE AS new_alarms
    FOR EACH STATEMENT EXECUTE FUNCTION devices_offline_flag_opened();
CREATE TRIGGER alarms_offline_flag_changed AFTER UPDATE ON alarms
    REFERENCING OLD TABLE AS old_alarms NEW TABLE AS new_alarms
    FOR EACH STATEMENT EXECUTE FUNCTION devices_offline_flag_changed();
CREATE TRIGGER alarms_offline_flag_removed AFTER DELETE ON alarms
    REFERENCING OLD TABLE AS old_alarms
    FOR EACH STATEMENT EXECUTE FUNCTION devices_offline_flag_removed();

-- The family cascade's search for devices offline for long reads the open offline alarms by
-- age, the due ones first, instead of all of them (a 100,000 run with tens of thousands open
-- made it the busiest statement). `call_id IS NOT NULL` is in the condition so that only that
-- search, which names it, can use the index: the offline sweep's probe of one device's open
-- alarm, planned on statistics from before an outage, chose an index of all open offline
-- alarms and read every one for every candidate.
CREATE INDEX alarms_offline_due ON alarms (received_at)
    WHERE kind = 'DEVICE_OFFLINE' AND cleared_at IS NULL AND call_id IS NOT NULL;
