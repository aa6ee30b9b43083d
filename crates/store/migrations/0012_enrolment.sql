-- Enrolment: a new tablet registers the key it generated itself with a one-time code the
-- installer brings (printed and shown as a QR code by `carebell admin enrolment-code`). Only a
-- hash of the code is kept.
CREATE TABLE enrolment_codes (
    code_hash    bytea PRIMARY KEY CHECK (length(code_hash) = 32),
    resident_id  uuid NOT NULL REFERENCES residents (id),
    -- The device this enrolment replaces: revoked when the new one enrols.
    replaces     text REFERENCES devices (id),
    created_by   text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    expires_at   timestamptz NOT NULL,
    used_at      timestamptz,
    device_id    text REFERENCES devices (id)
);
CREATE INDEX enrolment_codes_resident ON enrolment_codes (resident_id);
