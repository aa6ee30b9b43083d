-- Handling an alarm: the operator's actions while handling it, and how it was resolved.

ALTER TABLE calls ADD COLUMN outcome text CHECK (outcome IN
    ('false_alarm', 'resolved_by_phone', 'responder_visited', 'ambulance', 'hospital'));
ALTER TABLE alarms ADD COLUMN resolved_at timestamptz;
ALTER TABLE alarms ADD COLUMN outcome text;

CREATE TABLE alarm_actions (
    id           bigserial PRIMARY KEY,
    call_id      uuid NOT NULL REFERENCES calls (id),
    operator_id  uuid NOT NULL REFERENCES operators (id),
    action       text NOT NULL CHECK (action IN
                     ('called_senior', 'called_120', 'notified_family', 'sent_responder')),
    note         text NOT NULL DEFAULT '' CHECK (length(note) <= 2000),
    at           timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX alarm_actions_call ON alarm_actions (call_id, id);
