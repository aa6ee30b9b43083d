-- Proactive care: schedules per resident (welfare calls, reminders, check-ins), each occurrence
-- followed until it is confirmed or escalated; content for the tablets; test calls.

-- What the tablet shows content in, and what the senior likes (content targeting).
ALTER TABLE residents ADD COLUMN language text NOT NULL DEFAULT 'zh'
    CHECK (language ~ '^[a-z]{2,3}(-[A-Za-z0-9]{2,8})?$');
ALTER TABLE residents ADD COLUMN interests text[] NOT NULL DEFAULT '{}';

CREATE TABLE schedules (
    id              uuid PRIMARY KEY,
    resident_id     uuid NOT NULL REFERENCES residents (id),
    -- welfare_call: an outbound task in the operators' queue; reminder: shown on the tablet
    -- with a confirm button; check_in: a daily "I'm OK" window.
    kind            text NOT NULL CHECK (kind IN ('welfare_call', 'reminder', 'check_in')),
    title           text NOT NULL CHECK (length(title) BETWEEN 1 AND 200),
    -- An RFC 5545 RRULE, from `starts_local` in `time_zone` (an IANA name).
    rule            text NOT NULL CHECK (length(rule) BETWEEN 1 AND 500),
    starts_local    timestamp NOT NULL,
    time_zone       text NOT NULL CHECK (length(time_zone) BETWEEN 1 AND 64),
    -- How long an attempt waits for the confirm button before it counts as missed (a
    -- reminder's retry comes after 10 minutes; a check-in's window is its wait).
    wait_seconds    integer NOT NULL CHECK (wait_seconds BETWEEN 1 AND 86400),
    active          boolean NOT NULL DEFAULT true,
    -- The next occurrence not yet started (NULL: the rule has ended).
    next_due_at     timestamptz,
    created_by      text NOT NULL DEFAULT '',
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX schedules_due ON schedules (next_due_at) WHERE active AND next_due_at IS NOT NULL;
CREATE INDEX schedules_resident ON schedules (resident_id);

-- One occurrence of a schedule, from its first attempt to its end.
CREATE TABLE schedule_occurrences (
    id              uuid PRIMARY KEY,
    schedule_id     uuid NOT NULL REFERENCES schedules (id),
    due_at          timestamptz NOT NULL,
    -- waiting: shown, not yet confirmed; confirmed; contacts_notified: missed twice, the
    -- ordered contacts told; task_created: an operator task made (the end of escalation);
    -- placed: a welfare call put in the operators' queue.
    -- family_acknowledged: a contact told took it on (through the family API) before the task.
    state           text NOT NULL CHECK (state IN
                        ('waiting', 'confirmed', 'contacts_notified', 'family_acknowledged',
                         'task_created', 'placed')),
    attempts        integer NOT NULL DEFAULT 0,
    -- When the next step is due (a retry, the contacts, the task); NULL: nothing more to do.
    next_step_at    timestamptz,
    confirmed_at    timestamptz,
    call_id         uuid REFERENCES calls (id),
    UNIQUE (schedule_id, due_at)
);
CREATE INDEX schedule_occurrences_next ON schedule_occurrences (next_step_at)
    WHERE next_step_at IS NOT NULL;

-- Contacts told about a missed reminder or check-in are family notifications too (the family
-- API shows and acknowledges them like alarm alerts): about a call, or about an occurrence.
ALTER TABLE family_notifications ALTER COLUMN call_id DROP NOT NULL;
ALTER TABLE family_notifications ADD COLUMN occurrence_id uuid REFERENCES schedule_occurrences (id);
ALTER TABLE family_notifications ADD CONSTRAINT family_notifications_about_one
    CHECK ((call_id IS NULL) <> (occurrence_id IS NULL));
CREATE UNIQUE INDEX family_notifications_one_per_occurrence
    ON family_notifications (occurrence_id, contact_id) WHERE occurrence_id IS NOT NULL;

-- The catalogue of what tablets can show or play.
CREATE TABLE content_items (
    id              uuid PRIMARY KEY,
    kind            text NOT NULL CHECK (kind IN ('health', 'programme', 'story', 'song', 'notice')),
    title           text NOT NULL CHECK (length(title) BETWEEN 1 AND 200),
    body            text NOT NULL DEFAULT '',
    media_url       text NOT NULL DEFAULT '' CHECK (length(media_url) <= 2000),
    language        text NOT NULL CHECK (language ~ '^[a-z]{2,3}(-[A-Za-z0-9]{2,8})?$'),
    tags            text[] NOT NULL DEFAULT '{}',
    -- Only this station's tablets (NULL: every station).
    station_id      uuid REFERENCES stations (id),
    created_by      text NOT NULL DEFAULT '',
    created_at      timestamptz NOT NULL DEFAULT now()
);

-- What each tablet was sent (through the outbox: received = acknowledged) and opened.
CREATE TABLE content_deliveries (
    content_id      uuid NOT NULL REFERENCES content_items (id),
    device_id       text NOT NULL REFERENCES devices (id),
    -- A tablet's copy lives and goes with its outbox row (an erasure deletes the outbox).
    outbox_id       bigint NOT NULL REFERENCES device_outbox (id) ON DELETE CASCADE,
    queued_at       timestamptz NOT NULL DEFAULT now(),
    opened_at       timestamptz,
    PRIMARY KEY (content_id, device_id)
);
