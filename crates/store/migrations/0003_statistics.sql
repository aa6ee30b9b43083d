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
-- Start from what the log already holds (events written before this migration).
INSERT INTO stats_live (offered, answered, answered_within_60s, answered_within_180s, abandoned,
                        short_abandoned, sum_answer_ms, ended, sum_handle_ms)
SELECT
    count(*) FILTER (WHERE kind = 'call.created'),
    count(*) FILTER (WHERE kind = 'call.answered'),
    count(*) FILTER (WHERE kind = 'call.answered' AND wait_ms <= 60000),
    count(*) FILTER (WHERE kind = 'call.answered' AND wait_ms <= 180000),
    count(*) FILTER (WHERE kind = 'call.abandoned'),
    count(*) FILTER (WHERE kind = 'call.abandoned' AND wait_ms < 15000),
    coalesce(sum(wait_ms) FILTER (WHERE kind = 'call.answered'), 0),
    count(*) FILTER (WHERE kind = 'call.ended'),
    coalesce(sum(handle_ms) FILTER (WHERE kind = 'call.ended'), 0)
FROM (
    SELECT kind, (detail->>'wait_ms')::bigint AS wait_ms, (detail->>'handle_ms')::bigint AS handle_ms
    FROM events
    WHERE kind IN ('call.created', 'call.answered', 'call.abandoned', 'call.ended')
      AND coalesce(detail->>'kind', '') <> 'callback'
) e;

-- Abandons within this many milliseconds (the tablet's cancel window) are "short": they are
-- counted, but left out of the service level's denominator.
CREATE FUNCTION stats_short_abandon_ms() RETURNS bigint LANGUAGE sql IMMUTABLE AS 'SELECT 15000::bigint';

CREATE FUNCTION stats_count() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    -- A missing wait counts in no "within" bucket and adds nothing to the sums, exactly as the
    -- recomputation's FILTER and sum() treat NULL.
    wait_ms bigint := (NEW.detail->>'wait_ms')::bigint;
BEGIN
    IF coalesce(NEW.detail->>'kind', '') = 'callback' THEN
        RETURN NULL;
    END IF;
    IF NEW.kind = 'call.created' THEN
        UPDATE stats_live SET offered = offered + 1;
    ELSIF NEW.kind = 'call.answered' THEN
        UPDATE stats_live SET answered = answered + 1,
            answered_within_60s = answered_within_60s + coalesce(wait_ms <= 60000, false)::int,
            answered_within_180s = answered_within_180s + coalesce(wait_ms <= 180000, false)::int,
            sum_answer_ms = sum_answer_ms + coalesce(wait_ms, 0);
    ELSIF NEW.kind = 'call.abandoned' THEN
        UPDATE stats_live SET abandoned = abandoned + 1,
            short_abandoned = short_abandoned + coalesce(wait_ms < stats_short_abandon_ms(), false)::int;
    ELSIF NEW.kind = 'call.ended' THEN
        UPDATE stats_live SET ended = ended + 1,
            sum_handle_ms = sum_handle_ms + coalesce((NEW.detail->>'handle_ms')::bigint, 0);
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER events_stats AFTER INSERT ON events
    FOR EACH ROW WHEN (NEW.kind IN ('call.created', 'call.answered', 'call.abandoned', 'call.ended'))
    EXECUTE FUNCTION stats_count();

-- The append-only tables refuse TRUNCATE too.
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();
