-- Device supervision: "device offline" technical alarms raised by the server from durable
-- last-seen times, cleared when the device is back.

ALTER TABLE alarms ADD COLUMN cleared_at timestamptz;
-- Exactly one open "device offline" alarm per device.
CREATE UNIQUE INDEX alarms_one_open_offline ON alarms (device_id)
    WHERE kind = 'DEVICE_OFFLINE' AND cleared_at IS NULL;
CREATE INDEX devices_last_seen ON devices (last_seen_at) WHERE revoked_at IS NULL;

-- Items the server raises about a device (it is offline) are not shown on that device.
ALTER TABLE calls ADD COLUMN announce boolean NOT NULL DEFAULT true;

-- A waiting item whose cause went away by itself (a device that came back) is cleared.
ALTER TABLE calls DROP CONSTRAINT calls_state_check;
ALTER TABLE calls ADD CONSTRAINT calls_state_check
    CHECK (state IN ('queued', 'offered', 'answered', 'ended', 'abandoned', 'cleared'));
