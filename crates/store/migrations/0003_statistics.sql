-- Live statistics, kept by a trigger on the event log in the same transaction as each event,
-- so that they always equal a recomputation from the log (Store::recompute_statistics).
-- Call-backs are outbound work and are left out of the answering figures.

CREATE TABLE stats_live (
    id                    boolean PRIMARY KEY DEFAULT true CHECK (id),
    offered               bigint NOT NULL DEFAULT 0,
    answered              bigint NOT NULL DEFAULT 0,
    answered_within_60s   bigint NOT NULL DEFAULT 0,
    answered_within_180s  bigint NOT NULL DEFAULT 0,
    abandoned             bigint NOT NULL DEFAULT 0,
    short_abandoned       bigint NOT NULL DEFAULT 0,
    sum_answer_ms         bigint NOT NULL DEFAULT 0,
    ended                 bigint NOT NULL DEFAULT 0,
    sum_handle_ms         bigint NOT NULL DEFAULT 0
);
INSERT INTO stats_live DEFAULT VALUES;

-- Abandons within this many milliseconds (the tablet's cancel window) are "short": they are
-- counted, but left out of the service level's denominator.
CREATE FUNCTION stats_short_abandon_ms() RETURNS bigint LANGUAGE sql IMMUTABLE AS 'SELECT 15000::bigint';

CREATE FUNCTION stats_count() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    wait_ms bigint := (NEW.detail->>'wait_ms')::bigint;
BEGIN
    IF coalesce(NEW.detail->>'kind', '') = 'callback' THEN
        RETURN NULL;
    END IF;
    IF NEW.kind = 'call.created' THEN
        UPDATE stats_live SET offered = offered + 1;
    ELSIF NEW.kind = 'call.answered' THEN
        UPDATE stats_live SET answered = answered + 1,
            answered_within_60s = answered_within_60s + (wait_ms <= 60000)::int,
            answered_within_180s = answered_within_180s + (wait_ms <= 180000)::int,
            sum_answer_ms = sum_answer_ms + wait_ms;
    ELSIF NEW.kind = 'call.abandoned' THEN
        UPDATE stats_live SET abandoned = abandoned + 1,
            short_abandoned = short_abandoned + (wait_ms < stats_short_abandon_ms())::int;
    ELSIF NEW.kind = 'call.ended' THEN
        UPDATE stats_live SET ended = ended + 1,
            sum_handle_ms = sum_handle_ms + (NEW.detail->>'handle_ms')::bigint;
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER events_stats AFTER INSERT ON events
    FOR EACH ROW WHEN (NEW.kind IN ('call.created', 'call.answered', 'call.abandoned', 'call.ended'))
    EXECUTE FUNCTION stats_count();
