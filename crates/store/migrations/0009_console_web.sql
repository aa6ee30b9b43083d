-- What the operator's card shows first: risk warnings, and how responders get in.
ALTER TABLE residents ADD COLUMN risk_warnings text NOT NULL DEFAULT ''
    CHECK (length(risk_warnings) <= 2000);
ALTER TABLE residents ADD COLUMN key_safe text NOT NULL DEFAULT ''
    CHECK (length(key_safe) <= 500);
CREATE INDEX calls_resident_recent ON calls (resident_id, created_at DESC);
