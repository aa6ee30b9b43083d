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

CREATE FUNCTION devices_offline_flag() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE devices d
    SET offline_alarm_open = EXISTS (SELECT 1 FROM alarms a
                                     WHERE a.device_id = d.id AND a.kind = 'DEVICE_OFFLINE'
                                       AND a.cleared_at IS NULL)
    WHERE d.id IN (CASE WHEN TG_OP <> 'INSERT' THEN OLD.device_id END,
                   CASE WHEN TG_OP <> 'DELETE' THEN NEW.device_id END);
    RETURN NULL;
END
$$;

CREATE TRIGGER alarms_offline_flag_opened AFTER INSERT ON alarms
    FOR EACH ROW WHEN (NEW.kind = 'DEVICE_OFFLINE') EXECUTE FUNCTION devices_offline_flag();
CREATE TRIGGER alarms_offline_flag_changed AFTER UPDATE OF cleared_at, kind, device_id ON alarms
    FOR EACH ROW WHEN (NEW.kind = 'DEVICE_OFFLINE' OR OLD.kind = 'DEVICE_OFFLINE')
    EXECUTE FUNCTION devices_offline_flag();
CREATE TRIGGER alarms_offline_flag_removed AFTER DELETE ON alarms
    FOR EACH ROW WHEN (OLD.kind = 'DEVICE_OFFLINE') EXECUTE FUNCTION devices_offline_flag();

-- The family cascade's search for devices offline for long reads the open offline alarms by
-- age, the due ones first, instead of all of them.
CREATE INDEX alarms_offline_open ON alarms (received_at)
    WHERE kind = 'DEVICE_OFFLINE' AND cleared_at IS NULL;
