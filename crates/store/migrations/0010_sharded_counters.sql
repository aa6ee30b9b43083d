-- Sharded live counters. Every call and alarm used to update one row (stats_live, and its
-- station's row of station_day_stats) inside its own transaction, so all of them queued behind
-- each other's commits: under a thousand alarms a second that was the whole latency. Each
-- counter now has 16 shards, picked by the database session; readers sum the shards.

CREATE FUNCTION counter_shard() RETURNS smallint LANGUAGE sql VOLATILE
    AS 'SELECT (pg_backend_pid() % 16)::smallint';

ALTER TABLE stats_live DROP COLUMN id;
ALTER TABLE stats_live ADD COLUMN shard smallint NOT NULL DEFAULT 0;
ALTER TABLE stats_live ADD PRIMARY KEY (shard);
INSERT INTO stats_live (shard) SELECT generate_series(1, 15);

ALTER TABLE station_day_stats ADD COLUMN shard smallint NOT NULL DEFAULT 0;
ALTER TABLE station_day_stats DROP CONSTRAINT station_day_stats_pkey;
ALTER TABLE station_day_stats ADD PRIMARY KEY (station_id, day, shard);

ALTER TABLE provider_day_stats ADD COLUMN shard smallint NOT NULL DEFAULT 0;
ALTER TABLE provider_day_stats DROP CONSTRAINT provider_day_stats_pkey;
ALTER TABLE provider_day_stats ADD PRIMARY KEY (station_id, provider_id, day, shard);

CREATE OR REPLACE FUNCTION stats_count() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    -- A missing wait counts in no "within" bucket and adds nothing to the sums, exactly as the
    -- recomputation's FILTER and sum() treat NULL.
    wait_ms bigint := (NEW.detail->>'wait_ms')::bigint;
BEGIN
    IF coalesce(NEW.detail->>'kind', '') = 'callback' THEN
        RETURN NULL;
    END IF;
    IF NEW.kind = 'call.created' THEN
        UPDATE stats_live SET offered = offered + 1
            WHERE shard = counter_shard();
    ELSIF NEW.kind = 'call.answered' THEN
        UPDATE stats_live SET answered = answered + 1,
            answered_within_60s = answered_within_60s + coalesce(wait_ms <= 60000, false)::int,
            answered_within_180s = answered_within_180s + coalesce(wait_ms <= 180000, false)::int,
            sum_answer_ms = sum_answer_ms + coalesce(wait_ms, 0)
            WHERE shard = counter_shard();
    ELSIF NEW.kind = 'call.abandoned' THEN
        UPDATE stats_live SET abandoned = abandoned + 1,
            short_abandoned = short_abandoned + coalesce(wait_ms < stats_short_abandon_ms(), false)::int
            WHERE shard = counter_shard();
    ELSIF NEW.kind = 'call.ended' THEN
        UPDATE stats_live SET ended = ended + 1,
            sum_handle_ms = sum_handle_ms + coalesce((NEW.detail->>'handle_ms')::bigint, 0)
            WHERE shard = counter_shard();
    END IF;
    RETURN NULL;
END;
$$;

CREATE OR REPLACE FUNCTION service_stats_count() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    station   uuid;
    provider  uuid := (NEW.detail->>'provider_id')::uuid;
    local_day date;
    kind      text := coalesce(NEW.detail->>'kind', '');
    wait_ms   bigint := (NEW.detail->>'wait_ms')::bigint;
BEGIN
    IF NEW.kind IN ('call.created', 'call.answered', 'call.abandoned') THEN
        SELECT nullif(c.station, '')::uuid INTO station FROM calls c WHERE c.id = NEW.call_id;
    ELSIF NEW.kind LIKE 'order.%' THEN
        station := (NEW.detail->>'station_id')::uuid;
    ELSE
        RETURN NULL;
    END IF;
    IF station IS NULL THEN
        RETURN NULL;
    END IF;
    SELECT (NEW.at AT TIME ZONE s.time_zone)::date INTO local_day FROM stations s WHERE s.id = station;
    IF local_day IS NULL THEN
        RETURN NULL;
    END IF;

    IF NEW.kind LIKE 'call.%' OR NEW.kind IN ('order.created', 'order.completed',
                                             'order.cancelled', 'order.escalated') THEN
        INSERT INTO station_day_stats AS s (station_id, day, shard, remote_services, emergencies,
            calls_offered, calls_answered, answered_within_60s, calls_abandoned, short_abandoned,
            orders_created, orders_completed, orders_cancelled, escalations)
        VALUES (station, local_day, counter_shard(),
            (NEW.kind = 'call.answered')::int,
            (NEW.kind = 'call.created' AND kind = 'emergency')::int,
            (NEW.kind = 'call.created' AND kind <> 'callback')::int,
            (NEW.kind = 'call.answered' AND kind <> 'callback')::int,
            (NEW.kind = 'call.answered' AND kind <> 'callback' AND coalesce(wait_ms <= 60000, false))::int,
            (NEW.kind = 'call.abandoned' AND kind <> 'callback')::int,
            (NEW.kind = 'call.abandoned' AND kind <> 'callback' AND coalesce(wait_ms < stats_short_abandon_ms(), false))::int,
            (NEW.kind = 'order.created')::int,
            (NEW.kind = 'order.completed')::int,
            (NEW.kind = 'order.cancelled')::int,
            (NEW.kind = 'order.escalated')::int)
        ON CONFLICT (station_id, day, shard) DO UPDATE SET
            remote_services = s.remote_services + EXCLUDED.remote_services,
            emergencies = s.emergencies + EXCLUDED.emergencies,
            calls_offered = s.calls_offered + EXCLUDED.calls_offered,
            calls_answered = s.calls_answered + EXCLUDED.calls_answered,
            answered_within_60s = s.answered_within_60s + EXCLUDED.answered_within_60s,
            calls_abandoned = s.calls_abandoned + EXCLUDED.calls_abandoned,
            short_abandoned = s.short_abandoned + EXCLUDED.short_abandoned,
            orders_created = s.orders_created + EXCLUDED.orders_created,
            orders_completed = s.orders_completed + EXCLUDED.orders_completed,
            orders_cancelled = s.orders_cancelled + EXCLUDED.orders_cancelled,
            escalations = s.escalations + EXCLUDED.escalations;
    END IF;

    IF provider IS NOT NULL AND NEW.kind IN ('order.offered', 'order.accepted', 'order.declined',
            'order.arrived', 'order.completed', 'order.rated') THEN
        INSERT INTO provider_day_stats AS p (station_id, provider_id, day, shard, offers, accepted,
            declined, timed_out, arrivals, on_time, completed, ratings, rating_sum)
        VALUES (station, provider, local_day, counter_shard(),
            (NEW.kind = 'order.offered')::int,
            (NEW.kind = 'order.accepted')::int,
            (NEW.kind = 'order.declined' AND coalesce(NEW.detail->>'reason', '') <> 'timed_out')::int,
            (NEW.kind = 'order.declined' AND coalesce(NEW.detail->>'reason', '') = 'timed_out')::int,
            (NEW.kind = 'order.arrived')::int,
            (NEW.kind = 'order.arrived' AND coalesce((NEW.detail->>'on_time')::boolean, false))::int,
            (NEW.kind = 'order.completed')::int,
            (NEW.kind = 'order.rated')::int,
            CASE WHEN NEW.kind = 'order.rated' THEN coalesce((NEW.detail->>'stars')::int, 0) ELSE 0 END)
        ON CONFLICT (station_id, provider_id, day, shard) DO UPDATE SET
            offers = p.offers + EXCLUDED.offers,
            accepted = p.accepted + EXCLUDED.accepted,
            declined = p.declined + EXCLUDED.declined,
            timed_out = p.timed_out + EXCLUDED.timed_out,
            arrivals = p.arrivals + EXCLUDED.arrivals,
            on_time = p.on_time + EXCLUDED.on_time,
            completed = p.completed + EXCLUDED.completed,
            ratings = p.ratings + EXCLUDED.ratings,
            rating_sum = p.rating_sum + EXCLUDED.rating_sum;
    END IF;
    RETURN NULL;
END;
$$;
