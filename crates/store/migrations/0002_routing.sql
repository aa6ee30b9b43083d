-- The dispatch engine: operator skills and states, queues and deadlines on items, ring-all,
-- call-backs, transfers, and routing rules as data.

ALTER TABLE operators DROP CONSTRAINT operators_status_check;
ALTER TABLE operators ADD CONSTRAINT operators_status_check
    CHECK (status IN ('offline', 'available', 'away', 'on_call', 'wrap_up', 'paused'));
ALTER TABLE operators ADD COLUMN skills text[] NOT NULL DEFAULT '{}';
-- Offers that rang out unanswered in a row; reset by an acceptance or by going available.
ALTER TABLE operators ADD COLUMN missed_offers integer NOT NULL DEFAULT 0;
-- When a timed status (wrap-up) ends.
ALTER TABLE operators ADD COLUMN status_until timestamptz;
ALTER TABLE operators ADD COLUMN status_reason text NOT NULL DEFAULT '';
-- When a console of the operator last attached (on any node): a console that goes away takes
-- the operator offline only if no other attached since.
ALTER TABLE operators ADD COLUMN console_attached_at timestamptz;

ALTER TABLE calls DROP CONSTRAINT calls_kind_check;
ALTER TABLE calls ADD CONSTRAINT calls_kind_check
    CHECK (kind IN ('call', 'emergency', 'technical', 'callback'));
ALTER TABLE calls ADD COLUMN queue_id text NOT NULL DEFAULT 'calls';
-- When the item entered its current queue (routing steps count from here).
ALTER TABLE calls ADD COLUMN queued_at timestamptz NOT NULL DEFAULT now();
-- The next moment something must happen to a waiting item (a widening, an overflow, an alert).
ALTER TABLE calls ADD COLUMN deadline_at timestamptz;
ALTER TABLE calls ADD COLUMN dialect text NOT NULL DEFAULT '';
ALTER TABLE calls ADD COLUMN station text NOT NULL DEFAULT '';
-- A call-back task points at the abandoned call it answers.
ALTER TABLE calls ADD COLUMN callback_of uuid REFERENCES calls (id);
ALTER TABLE calls ADD COLUMN overflowed boolean NOT NULL DEFAULT false;
CREATE UNIQUE INDEX calls_one_callback ON calls (callback_of) WHERE callback_of IS NOT NULL;
CREATE INDEX calls_waiting_by_deadline ON calls (deadline_at) WHERE state IN ('queued', 'offered');

-- Ring-all: an emergency rings at several operators at once. Still at most one live offer per
-- operator (one voice call at a time) and one accepted offer per call.
DROP INDEX offers_one_live_per_call;
ALTER TABLE offers ADD COLUMN reason text NOT NULL DEFAULT '';
-- An accepted offer whose call was later transferred: still one holder at a time.
ALTER TABLE offers DROP CONSTRAINT offers_state_check;
ALTER TABLE offers ADD CONSTRAINT offers_state_check
    CHECK (state IN ('offered', 'accepted', 'expired', 'withdrawn', 'transferred'));

-- Routing rules as data: the newest row is in force.
CREATE TABLE routing_rules (
    version    bigserial PRIMARY KEY,
    body       jsonb NOT NULL,
    loaded_at  timestamptz NOT NULL DEFAULT now(),
    loaded_by  text NOT NULL DEFAULT ''
);
