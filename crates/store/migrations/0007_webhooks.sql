-- Outbound webhook deliveries (for SMS or messaging gateways), written in the same transaction
-- as the notification that causes them, retried with backoff, dead-lettered after too many
-- failures.

ALTER TABLE contacts ALTER COLUMN channels SET DEFAULT '{app}';

CREATE TABLE webhook_deliveries (
    id               bigserial PRIMARY KEY,
    notification_id  bigint REFERENCES family_notifications (id),
    body             jsonb NOT NULL,
    state            text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'dead')),
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    last_error       text NOT NULL DEFAULT '',
    created_at       timestamptz NOT NULL DEFAULT now(),
    delivered_at     timestamptz,
    -- Who is sending it right now: settling an attempt must match, so a node whose lease ran
    -- out cannot record an attempt over another node's.
    claim_token      uuid
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE state = 'pending';
