-- The live statistics are kept once per statement, not once per event.
--
-- The triggers of 0003, 0008 and 0010 ran a PL/pgSQL function for every event row: the service
-- figures for every event of every kind, the answering figures for every call event. An alarm
-- batch writes two events per alarm, so a batch of 32 ran 64 functions and, for its 32 new
-- calls, 32 counter updates, 32 station look-ups and 32 upserts. During a flood those were the
-- busiest statements in the database. These triggers read the statement's new rows as a table
-- (a transition table) and add them up in one update and one upsert per statement.
--
-- What they add is exactly what the row triggers added: Store::recompute_statistics and the
-- recomputed service report still equal the live counters. The rows they upsert are sorted by
-- key, so two sessions on the same shard take their row locks in the same order.

DROP TRIGGER events_stats ON events;
DROP TRIGGER events_service_stats ON events;
DROP FUNCTION stats_count();
DROP FUNCTION service_stats_count();

CREATE FUNCTION stats_count_statement() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE stats_live AS l SET
        offered = l.offered + n.offered,
        answered = l.answered + n.answered,
        answered_within_60s = l.answered_within_60s + n.answered_within_60s,
        answered_within_180s = l.answered_within_180s + n.answered_within_180s,
        sum_answer_ms = l.sum_answer_ms + n.sum_answer_ms,
        abandoned = l.abandoned + n.abandoned,
        short_abandoned = l.short_abandoned + n.short_abandoned,
        ended = l.ended + n.ended,
        sum_handle_ms = l.sum_handle_ms + n.sum_handle_ms
    FROM (
        -- A missing wait counts in no "within" bucket and adds nothing to the sums, exactly as
        -- the recomputation's FILTER and sum() treat NULL.
        SELECT count(*) AS events,
            count(*) FILTER (WHERE kind = 'call.created') AS offered,
            count(*) FILTER (WHERE kind = 'call.answered') AS answered,
            count(*) FILTER (WHERE kind = 'call.answered' AND wait_ms <= 60000) AS answered_within_60s,
            count(*) FILTER (WHERE kind = 'call.answered' AND wait_ms <= 180000) AS answered_within_180s,
            coalesce(sum(wait_ms) FILTER (WHERE kind = 'call.answered'), 0)::bigint AS sum_answer_ms,
            count(*) FILTER (WHERE kind = 'call.abandoned') AS abandoned,
            count(*) FILTER (WHERE kind = 'call.abandoned' AND wait_ms < stats_short_abandon_ms()) AS short_abandoned,
            count(*) FILTER (WHERE kind = 'call.ended') AS ended,
            coalesce(sum(handle_ms) FILTER (WHERE kind = 'call.ended'), 0)::bigint AS sum_handle_ms
        FROM (
            SELECT e.kind, (e.detail->>'wait_ms')::bigint AS wait_ms,
                   (e.detail->>'handle_ms')::bigint AS handle_ms
            FROM new_events e
            WHERE e.kind IN ('call.created', 'call.answered', 'call.abandoned', 'call.ended')
              AND coalesce(e.detail->>'kind', '') <> 'callback'
        ) counted
    ) n
    WHERE n.events > 0 AND l.shard = counter_shard();
    RETURN NULL;
END;
$$;

CREATE TRIGGER events_stats AFTER INSERT ON events
    REFERENCING NEW TABLE AS new_events
    FOR EACH STATEMENT EXECUTE FUNCTION stats_count_statement();

CREATE FUNCTION service_stats_count_statement() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    WITH counted AS MATERIALIZED (
        -- The events that count, each with its station and the station's local day. A call
        -- event takes its call's station, an order event the station in its detail.
        SELECT e.kind, e.call_kind, e.wait_ms, e.station, e.provider, e.detail,
               (e.at AT TIME ZONE s.time_zone)::date AS local_day
        FROM (
            SELECT ev.kind, coalesce(ev.detail->>'kind', '') AS call_kind,
                   (ev.detail->>'wait_ms')::bigint AS wait_ms,
                   (ev.detail->>'provider_id')::uuid AS provider, ev.at, ev.detail,
                   CASE WHEN ev.kind LIKE 'call.%'
                        THEN (SELECT nullif(c.station, '')::uuid FROM calls c WHERE c.id = ev.call_id)
                        ELSE (ev.detail->>'station_id')::uuid END AS station
            FROM new_events ev
            WHERE ev.kind IN ('call.created', 'call.answered', 'call.abandoned')
               OR ev.kind LIKE 'order.%'
        ) e JOIN stations s ON s.id = e.station
    ), stations_counted AS (
        INSERT INTO station_day_stats AS s (station_id, day, shard, remote_services, emergencies,
            calls_offered, calls_answered, answered_within_60s, calls_abandoned, short_abandoned,
            orders_created, orders_completed, orders_cancelled, escalations)
        SELECT station, local_day, counter_shard(),
            count(*) FILTER (WHERE kind = 'call.answered'),
            count(*) FILTER (WHERE kind = 'call.created' AND call_kind = 'emergency'),
            count(*) FILTER (WHERE kind = 'call.created' AND call_kind <> 'callback'),
            count(*) FILTER (WHERE kind = 'call.answered' AND call_kind <> 'callback'),
            count(*) FILTER (WHERE kind = 'call.answered' AND call_kind <> 'callback'
                             AND wait_ms <= 60000),
            count(*) FILTER (WHERE kind = 'call.abandoned' AND call_kind <> 'callback'),
            count(*) FILTER (WHERE kind = 'call.abandoned' AND call_kind <> 'callback'
                             AND wait_ms < stats_short_abandon_ms()),
            count(*) FILTER (WHERE kind = 'order.created'),
            count(*) FILTER (WHERE kind = 'order.completed'),
            count(*) FILTER (WHERE kind = 'order.cancelled'),
            count(*) FILTER (WHERE kind = 'order.escalated')
        FROM counted
        WHERE kind LIKE 'call.%'
           OR kind IN ('order.created', 'order.completed', 'order.cancelled', 'order.escalated')
        GROUP BY station, local_day
        ORDER BY station, local_day
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
            escalations = s.escalations + EXCLUDED.escalations
        RETURNING 1
    )
    INSERT INTO provider_day_stats AS p (station_id, provider_id, day, shard, offers, accepted,
        declined, timed_out, arrivals, on_time, completed, ratings, rating_sum)
    SELECT station, provider, local_day, counter_shard(),
        count(*) FILTER (WHERE kind = 'order.offered'),
        count(*) FILTER (WHERE kind = 'order.accepted'),
        count(*) FILTER (WHERE kind = 'order.declined'
                         AND coalesce(detail->>'reason', '') <> 'timed_out'),
        count(*) FILTER (WHERE kind = 'order.declined'
                         AND coalesce(detail->>'reason', '') = 'timed_out'),
        count(*) FILTER (WHERE kind = 'order.arrived'),
        count(*) FILTER (WHERE kind = 'order.arrived'
                         AND coalesce((detail->>'on_time')::boolean, false)),
        count(*) FILTER (WHERE kind = 'order.completed'),
        count(*) FILTER (WHERE kind = 'order.rated'),
        coalesce(sum(coalesce((detail->>'stars')::int, 0)) FILTER (WHERE kind = 'order.rated'), 0)
    FROM counted
    WHERE provider IS NOT NULL AND kind IN ('order.offered', 'order.accepted', 'order.declined',
                                            'order.arrived', 'order.completed', 'order.rated')
    GROUP BY station, provider, local_day
    ORDER BY station, provider, local_day
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
    RETURN NULL;
END;
$$;

CREATE TRIGGER events_service_stats AFTER INSERT ON events
    REFERENCING NEW TABLE AS new_events
    FOR EACH STATEMENT EXECUTE FUNCTION service_stats_count_statement();
