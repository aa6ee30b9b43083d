-- Who holds a device's link, so that an idle held link costs the database nothing.
--
-- Before, every node rewrote the last-seen time of every device it held (each device every
-- quarter of the offline threshold): at 100,000 tablets about 11,000 row updates a second,
-- none of them HOT because last_seen_at was indexed. Now a device's row is written when its
-- link is taken (the arrival), when the link ends or the device goes silent (release, with
-- the time it was last heard), and when a silent device speaks again. In between, the node
-- renews one row of its own, its lease; a held device counts as seen when its node last
-- renewed. A node that stops renewing (it crashed, or is stuck) is folded by the offline
-- sweep: its devices get the node's last renewal as their last-seen time and are released,
-- so silence still becomes an alarm, from PostgreSQL alone.

CREATE TABLE gateway_nodes (
    id         uuid PRIMARY KEY,
    started_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- The node's lease: it renews this every supervision pass.
    heard_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- How many times the offline sweep released this node's devices because its lease had
    -- lapsed; a node that sees this grow takes its links again.
    folds      bigint NOT NULL DEFAULT 0
);

-- No foreign key: every arrival would lock the node's one row (FOR KEY SHARE), a hot parent
-- row. A node's row is deleted only a day after its lease lapsed, once it holds no device.
ALTER TABLE devices ADD COLUMN held_by uuid;
-- The holding node's session number: a link's release applies only to that link, never to a
-- newer session of the same device.
ALTER TABLE devices ADD COLUMN held_session bigint;
CREATE INDEX devices_held_by ON devices (held_by) WHERE held_by IS NOT NULL;

-- The offline sweep reads only released devices.
DROP INDEX devices_last_seen;
CREATE INDEX devices_last_seen ON devices (last_seen_at)
    WHERE revoked_at IS NULL AND held_by IS NULL;

-- When a device was last seen, for display: a held device as of its node's last renewal.
CREATE FUNCTION device_last_seen(last_seen timestamptz, held_by uuid) RETURNS timestamptz
    LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN held_by IS NULL THEN last_seen
                ELSE greatest(last_seen, (SELECT n.heard_at FROM gateway_nodes n WHERE n.id = held_by))
           END
$$;
