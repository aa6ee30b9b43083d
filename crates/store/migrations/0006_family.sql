-- Contacts, family accounts and the family cascade.

-- A resident's contacts: ordered ones are asked in turn until one acknowledges; parallel ones
-- (community station, residents' committee, neighbour) are told at once.
CREATE TABLE contacts (
    id                 uuid PRIMARY KEY,
    resident_id        uuid NOT NULL REFERENCES residents (id),
    name               text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    relationship       text NOT NULL DEFAULT '' CHECK (length(relationship) <= 100),
    phone              text NOT NULL DEFAULT '' CHECK (length(phone) <= 40),
    channels           text[] NOT NULL DEFAULT '{app}',
    holds_keys         boolean NOT NULL DEFAULT false,
    -- 1, 2, 3, ... for the ordered cascade; NULL for a parallel contact.
    position           integer CHECK (position > 0),
    family_account_id  uuid,
    created_at         timestamptz NOT NULL DEFAULT now(),
    UNIQUE (resident_id, position)
);

CREATE TABLE family_accounts (
    id             uuid PRIMARY KEY,
    username       text NOT NULL UNIQUE,
    display_name   text NOT NULL,
    password_hash  text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE contacts ADD CONSTRAINT contacts_family_account
    FOREIGN KEY (family_account_id) REFERENCES family_accounts (id);

CREATE TABLE family_sessions (
    token_hash         bytea PRIMARY KEY,
    family_account_id  uuid NOT NULL REFERENCES family_accounts (id),
    expires_at         timestamptz NOT NULL
);

-- One row per contact told about one alarm item.
CREATE TABLE family_notifications (
    id               bigserial PRIMARY KEY,
    call_id          uuid NOT NULL REFERENCES calls (id),
    contact_id       uuid NOT NULL REFERENCES contacts (id),
    -- 'waiting' (an ordered contact not yet asked), 'sent', 'acknowledged', 'expired' (asked,
    -- no answer in time), 'cancelled' (someone else acknowledged first).
    state            text NOT NULL CHECK (state IN ('waiting', 'sent', 'acknowledged', 'expired', 'cancelled')),
    parallel         boolean NOT NULL,
    sent_at          timestamptz,
    deadline_at      timestamptz,
    acknowledged_at  timestamptz,
    UNIQUE (call_id, contact_id)
);
CREATE INDEX family_notifications_due ON family_notifications (deadline_at) WHERE state = 'sent' AND NOT parallel;
ALTER TABLE calls ADD COLUMN cascade_started_at timestamptz;
