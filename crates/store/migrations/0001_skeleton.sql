-- The walking skeleton's schema: people, devices, calls, offers, the event log, the device
-- outbox and the audit log. Timestamps always come from the database clock.

CREATE TABLE stations (
    id          uuid PRIMARY KEY,
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE residents (
    id             uuid PRIMARY KEY,
    station_id     uuid NOT NULL REFERENCES stations (id),
    full_name      text NOT NULL CHECK (length(full_name) BETWEEN 1 AND 200),
    address        text NOT NULL DEFAULT '' CHECK (length(address) <= 500),
    phone          text NOT NULL DEFAULT '' CHECK (length(phone) <= 40),
    dialect        text NOT NULL DEFAULT '' CHECK (length(dialect) <= 40),
    medical_notes  text NOT NULL DEFAULT '' CHECK (length(medical_notes) <= 4000),
    created_at     timestamptz NOT NULL DEFAULT now()
);

-- Only public keys: nothing here lets a reader impersonate a device.
CREATE TABLE devices (
    id            text PRIMARY KEY,
    resident_id   uuid NOT NULL REFERENCES residents (id),
    public_key    bytea NOT NULL CHECK (length(public_key) = 32),
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_seen_at  timestamptz,
    revoked_at    timestamptz
);
CREATE INDEX devices_resident ON devices (resident_id);

CREATE TABLE operators (
    id             uuid PRIMARY KEY,
    username       text NOT NULL UNIQUE,
    display_name   text NOT NULL CHECK (length(display_name) BETWEEN 1 AND 100),
    password_hash  text NOT NULL,
    status         text NOT NULL DEFAULT 'offline'
                   CHECK (status IN ('offline', 'available', 'away', 'on_call')),
    -- When the current status began: "idle longest" is the earliest status_since among the
    -- available.
    status_since   timestamptz NOT NULL DEFAULT now(),
    created_at     timestamptz NOT NULL DEFAULT now()
);

-- Session tokens are stored hashed (SHA-256): a database reader cannot sign in with them.
CREATE TABLE operator_sessions (
    token_hash   bytea PRIMARY KEY,
    operator_id  uuid NOT NULL REFERENCES operators (id),
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL
);

CREATE TABLE calls (
    id            uuid PRIMARY KEY,
    device_id     text NOT NULL REFERENCES devices (id),
    resident_id   uuid NOT NULL REFERENCES residents (id),
    request_id    text NOT NULL,
    kind          text NOT NULL CHECK (kind IN ('call', 'emergency')),
    priority      smallint NOT NULL,
    state         text NOT NULL CHECK (state IN ('queued', 'offered', 'answered', 'ended', 'abandoned')),
    created_at    timestamptz NOT NULL DEFAULT now(),
    answered_at   timestamptz,
    answered_by   uuid REFERENCES operators (id),
    ended_at      timestamptz,
    disposition   text CHECK (disposition IN ('accidental_press', 'companionship', 'information',
                                              'service_request', 'health_concern', 'emergency')),
    note          text,
    -- The device's own request id is the idempotency key: a resent request never makes a
    -- second call.
    UNIQUE (device_id, request_id)
);
CREATE INDEX calls_waiting ON calls (priority DESC, created_at) WHERE state = 'queued';

CREATE TABLE offers (
    id           uuid PRIMARY KEY,
    call_id      uuid NOT NULL REFERENCES calls (id),
    operator_id  uuid NOT NULL REFERENCES operators (id),
    state        text NOT NULL CHECK (state IN ('offered', 'accepted', 'expired', 'withdrawn')),
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    decided_at   timestamptz
);
CREATE INDEX offers_live ON offers (expires_at) WHERE state = 'offered';
CREATE INDEX offers_call ON offers (call_id);
-- At most one live offer per call and per operator.
CREATE UNIQUE INDEX offers_one_live_per_call ON offers (call_id) WHERE state = 'offered';
CREATE UNIQUE INDEX offers_one_live_per_operator ON offers (operator_id) WHERE state = 'offered';
-- At most one accepted offer per call: the database itself refuses a second winner.
CREATE UNIQUE INDEX offers_one_winner ON offers (call_id) WHERE state = 'accepted';

CREATE TABLE alarms (
    id           uuid PRIMARY KEY,
    device_id    text NOT NULL REFERENCES devices (id),
    alarm_id     text NOT NULL,
    kind         text NOT NULL,
    raised_at    timestamptz,
    detail       text NOT NULL DEFAULT '',
    call_id      uuid REFERENCES calls (id),
    received_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (device_id, alarm_id)
);

-- The append-only event log: every step of every call, with the database's timestamp.
CREATE TABLE events (
    id           bigserial PRIMARY KEY,
    at           timestamptz NOT NULL DEFAULT clock_timestamp(),
    kind         text NOT NULL,
    call_id      uuid,
    offer_id     uuid,
    operator_id  uuid,
    device_id    text,
    detail       jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX events_call ON events (call_id, id);

-- Messages that must reach a device, kept until the device acknowledges them.
CREATE TABLE device_outbox (
    id          bigserial PRIMARY KEY,
    device_id   text NOT NULL REFERENCES devices (id),
    kind        text NOT NULL,
    payload     jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    acked_at    timestamptz
);
CREATE INDEX device_outbox_pending ON device_outbox (device_id, id) WHERE acked_at IS NULL;

-- Every read of a resident's record.
CREATE TABLE audit_log (
    id           bigserial PRIMARY KEY,
    at           timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor        text NOT NULL,
    action       text NOT NULL,
    resident_id  uuid,
    detail       jsonb NOT NULL DEFAULT '{}'
);

CREATE FUNCTION refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME;
END;
$$;
CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
