-- Service orders (工单) and the provider network: master data, orders and their offers, the
-- ledger in integer fen, and live per-day figures kept by a trigger on the event log.

-- Master data: a centre leads stations (中心带站), stations cover communities.
CREATE TABLE centres (
    id          uuid PRIMARY KEY,
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    created_at  timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE stations ADD COLUMN centre_id uuid REFERENCES centres (id);
-- Days in reports and statements are the station's local days.
ALTER TABLE stations ADD COLUMN time_zone text NOT NULL DEFAULT 'Asia/Shanghai'
    CHECK (now() AT TIME ZONE time_zone IS NOT NULL);

CREATE TABLE communities (
    id          uuid PRIMARY KEY,
    station_id  uuid NOT NULL REFERENCES stations (id),
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    UNIQUE (station_id, name)
);

ALTER TABLE residents ADD COLUMN community_id uuid REFERENCES communities (id);
ALTER TABLE residents ADD COLUMN lat double precision CHECK (lat BETWEEN -90 AND 90);
ALTER TABLE residents ADD COLUMN lon double precision CHECK (lon BETWEEN -180 AND 180);
-- What the resident pays of a service's price: free, a subsidised share, or market price.
ALTER TABLE residents ADD COLUMN entitlement text NOT NULL DEFAULT 'market'
    CHECK (entitlement IN ('free', 'subsidised', 'market'));
ALTER TABLE residents ADD COLUMN subsidy_percent integer NOT NULL DEFAULT 0
    CHECK (subsidy_percent BETWEEN 0 AND 100);
-- The prepaid service card (助老卡); always equal to minus the sum of its ledger entries.
ALTER TABLE residents ADD COLUMN card_balance_fen bigint NOT NULL DEFAULT 0
    CHECK (card_balance_fen >= 0);

CREATE TABLE service_items (
    code               text PRIMARY KEY CHECK (code ~ '^[a-z_]{1,40}$'),
    name_zh            text NOT NULL CHECK (length(name_zh) BETWEEN 1 AND 100),
    name_en            text NOT NULL CHECK (length(name_en) BETWEEN 1 AND 100),
    default_price_fen  bigint NOT NULL CHECK (default_price_fen >= 0),
    typical_minutes    integer NOT NULL CHECK (typical_minutes > 0)
);

CREATE TABLE providers (
    id                uuid PRIMARY KEY,
    name              text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    kind              text NOT NULL CHECK (kind IN ('social_organisation', 'company')),
    licence_no        text NOT NULL UNIQUE CHECK (length(licence_no) BETWEEN 1 AND 64),
    lat               double precision CHECK (lat BETWEEN -90 AND 90),
    lon               double precision CHECK (lon BETWEEN -180 AND 180),
    -- Serves anyone within this many metres of (lat, lon); 0: coverage by station only.
    radius_m          integer NOT NULL DEFAULT 0 CHECK (radius_m BETWEEN 0 AND 100000),
    -- Working hours in local minutes of the day; equal means around the clock.
    opens_minute      integer NOT NULL DEFAULT 0 CHECK (opens_minute BETWEEN 0 AND 1439),
    closes_minute     integer NOT NULL DEFAULT 0 CHECK (closes_minute BETWEEN 0 AND 1439),
    time_zone         text NOT NULL DEFAULT 'Asia/Shanghai'
                      CHECK (now() AT TIME ZONE time_zone IS NOT NULL),
    -- Orders held at once (accepted, en route, on site).
    capacity          integer NOT NULL DEFAULT 5 CHECK (capacity BETWEEN 1 AND 10000),
    rating_sum        bigint NOT NULL DEFAULT 0,
    rating_count      bigint NOT NULL DEFAULT 0,
    suspended_at      timestamptz,
    suspended_reason  text NOT NULL DEFAULT '',
    created_at        timestamptz NOT NULL DEFAULT now(),
    CHECK ((lat IS NULL) = (lon IS NULL)),
    CHECK (radius_m = 0 OR lat IS NOT NULL)
);

CREATE TABLE provider_stations (
    provider_id  uuid NOT NULL REFERENCES providers (id),
    station_id   uuid NOT NULL REFERENCES stations (id),
    PRIMARY KEY (provider_id, station_id)
);

CREATE TABLE provider_services (
    provider_id   uuid NOT NULL REFERENCES providers (id),
    service_code  text NOT NULL REFERENCES service_items (code),
    price_fen     bigint NOT NULL CHECK (price_fen >= 0),
    PRIMARY KEY (provider_id, service_code)
);

CREATE TABLE provider_staff (
    id           uuid PRIMARY KEY,
    provider_id  uuid NOT NULL REFERENCES providers (id),
    name         text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    phone        text NOT NULL DEFAULT '' CHECK (length(phone) <= 40),
    active       boolean NOT NULL DEFAULT true
);
CREATE INDEX provider_staff_provider ON provider_staff (provider_id);

CREATE TABLE provider_accounts (
    id             uuid PRIMARY KEY,
    provider_id    uuid NOT NULL REFERENCES providers (id),
    username       text NOT NULL UNIQUE,
    display_name   text NOT NULL CHECK (length(display_name) BETWEEN 1 AND 100),
    password_hash  text NOT NULL
);

CREATE TABLE provider_sessions (
    token_hash   bytea PRIMARY KEY,
    account_id   uuid NOT NULL REFERENCES provider_accounts (id),
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL
);

-- The programme's service policy (timers, circle, rating threshold), one row, as JSON
-- validated by the application (carebell_domain::orders::ServicePolicy).
CREATE TABLE service_policy (
    id      boolean PRIMARY KEY DEFAULT true CHECK (id),
    policy  jsonb NOT NULL DEFAULT '{}'
);
INSERT INTO service_policy DEFAULT VALUES;

CREATE TABLE orders (
    id                    uuid PRIMARY KEY,
    resident_id           uuid NOT NULL REFERENCES residents (id),
    station_id            uuid NOT NULL REFERENCES stations (id),
    call_id               uuid REFERENCES calls (id),
    service_code          text NOT NULL REFERENCES service_items (code),
    state                 text NOT NULL CHECK (state IN ('created', 'offered', 'accepted',
                              'en_route', 'arrived', 'completed', 'called_back', 'rated',
                              'closed', 'cancelled')),
    note                  text NOT NULL DEFAULT '' CHECK (length(note) <= 2000),
    created_by            uuid REFERENCES operators (id),
    created_at            timestamptz NOT NULL DEFAULT clock_timestamp(),
    accept_due_at         timestamptz NOT NULL,
    provider_id           uuid REFERENCES providers (id),
    staff_id              uuid REFERENCES provider_staff (id),
    price_fen             bigint CHECK (price_fen >= 0),
    distance_m            integer,
    travel_minutes        integer,
    in_circle             boolean,
    accepted_at           timestamptz,
    eta_at                timestamptz,
    arrive_due_at         timestamptz,
    arrived_at            timestamptz,
    arrived_lat           double precision,
    arrived_lon           double precision,
    completed_at          timestamptz,
    duration_minutes      integer CHECK (duration_minutes BETWEEN 0 AND 1440),
    completion_notes      text NOT NULL DEFAULT '' CHECK (length(completion_notes) <= 2000),
    callback_call_id      uuid REFERENCES calls (id),
    called_back_at        timestamptz,
    callback_note         text NOT NULL DEFAULT '' CHECK (length(callback_note) <= 2000),
    rating                smallint CHECK (rating BETWEEN 1 AND 5),
    rated_at              timestamptz,
    closed_at             timestamptz,
    cancelled_at          timestamptz,
    cancel_reason         text NOT NULL DEFAULT '' CHECK (length(cancel_reason) <= 500),
    accept_escalated_at   timestamptz,
    arrival_escalated_at  timestamptz
);
CREATE INDEX orders_resident ON orders (resident_id, created_at DESC);
CREATE INDEX orders_provider_active ON orders (provider_id)
    WHERE state IN ('accepted', 'en_route', 'arrived');
CREATE INDEX orders_open ON orders (state) WHERE state NOT IN ('closed', 'cancelled');
CREATE INDEX orders_callback ON orders (callback_call_id) WHERE callback_call_id IS NOT NULL;

CREATE TABLE order_offers (
    id              uuid PRIMARY KEY,
    order_id        uuid NOT NULL REFERENCES orders (id),
    provider_id     uuid NOT NULL REFERENCES providers (id),
    state           text NOT NULL CHECK (state IN ('offered', 'accepted', 'declined',
                        'timed_out', 'withdrawn')),
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    expires_at      timestamptz NOT NULL,
    decided_at      timestamptz,
    reason          text NOT NULL DEFAULT '' CHECK (length(reason) <= 500),
    distance_m      integer,
    travel_minutes  integer,
    in_circle       boolean NOT NULL DEFAULT false
);
CREATE UNIQUE INDEX order_offers_one_live ON order_offers (order_id) WHERE state = 'offered';
CREATE INDEX order_offers_provider ON order_offers (provider_id) WHERE state = 'offered';
CREATE INDEX order_offers_order ON order_offers (order_id);

-- Every order transition is an event in the one event log.
ALTER TABLE events ADD COLUMN order_id uuid;
CREATE INDEX events_order ON events (order_id, id) WHERE order_id IS NOT NULL;

-- The ledger: double entry in fen. An entry is a debit when positive, a credit when negative;
-- the entries of every transaction sum to zero, checked at commit.
CREATE TABLE ledger_transactions (
    id           uuid PRIMARY KEY,
    at           timestamptz NOT NULL DEFAULT clock_timestamp(),
    kind         text NOT NULL CHECK (kind IN ('order_charge', 'card_top_up')),
    order_id     uuid UNIQUE REFERENCES orders (id),
    resident_id  uuid REFERENCES residents (id),
    memo         text NOT NULL DEFAULT '' CHECK (length(memo) <= 500)
);

CREATE TABLE ledger_entries (
    id              bigserial PRIMARY KEY,
    transaction_id  uuid NOT NULL REFERENCES ledger_transactions (id),
    -- subsidy: the programme's subsidy spent (party: the resident it was spent on);
    -- resident: what the resident owes; card: the resident's prepaid card (a liability);
    -- provider: what is owed to a provider; cash: money received.
    account         text NOT NULL CHECK (account IN ('subsidy', 'resident', 'card', 'provider', 'cash')),
    party_id        uuid NOT NULL,
    amount_fen      bigint NOT NULL CHECK (amount_fen <> 0)
);
CREATE INDEX ledger_entries_transaction ON ledger_entries (transaction_id);
CREATE INDEX ledger_entries_party ON ledger_entries (account, party_id);

CREATE FUNCTION ledger_check_balance() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    total numeric;
BEGIN
    SELECT sum(amount_fen) INTO total FROM ledger_entries WHERE transaction_id = NEW.transaction_id;
    IF total <> 0 THEN
        RAISE EXCEPTION 'ledger transaction % does not balance: % fen', NEW.transaction_id, total;
    END IF;
    RETURN NULL;
END;
$$;
CREATE CONSTRAINT TRIGGER ledger_balances AFTER INSERT ON ledger_entries
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION ledger_check_balance();
CREATE TRIGGER ledger_entries_append_only BEFORE UPDATE OR DELETE ON ledger_entries
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER ledger_transactions_append_only BEFORE UPDATE OR DELETE ON ledger_transactions
    FOR EACH ROW EXECUTE FUNCTION refuse_change();

-- Live figures per station and local day, and per provider, station and day, kept by a trigger
-- on the event log in the event's own transaction, so that they always equal a recomputation
-- from the log (Store::service_report with Source::Recomputed).
CREATE TABLE station_day_stats (
    station_id            uuid NOT NULL,
    day                   date NOT NULL,
    remote_services       bigint NOT NULL DEFAULT 0,
    emergencies           bigint NOT NULL DEFAULT 0,
    calls_offered         bigint NOT NULL DEFAULT 0,
    calls_answered        bigint NOT NULL DEFAULT 0,
    answered_within_60s   bigint NOT NULL DEFAULT 0,
    calls_abandoned       bigint NOT NULL DEFAULT 0,
    short_abandoned       bigint NOT NULL DEFAULT 0,
    orders_created        bigint NOT NULL DEFAULT 0,
    orders_completed      bigint NOT NULL DEFAULT 0,
    orders_cancelled      bigint NOT NULL DEFAULT 0,
    escalations           bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (station_id, day)
);

CREATE TABLE provider_day_stats (
    station_id   uuid NOT NULL,
    provider_id  uuid NOT NULL,
    day          date NOT NULL,
    offers       bigint NOT NULL DEFAULT 0,
    accepted     bigint NOT NULL DEFAULT 0,
    declined     bigint NOT NULL DEFAULT 0,
    timed_out    bigint NOT NULL DEFAULT 0,
    arrivals     bigint NOT NULL DEFAULT 0,
    on_time      bigint NOT NULL DEFAULT 0,
    completed    bigint NOT NULL DEFAULT 0,
    ratings      bigint NOT NULL DEFAULT 0,
    rating_sum   bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (station_id, provider_id, day)
);

-- Start from the calls the log already holds (events written before this migration).
INSERT INTO station_day_stats (station_id, day, remote_services, emergencies, calls_offered,
    calls_answered, answered_within_60s, calls_abandoned, short_abandoned)
SELECT st.id, (e.at AT TIME ZONE st.time_zone)::date,
    count(*) FILTER (WHERE e.kind = 'call.answered'),
    count(*) FILTER (WHERE e.kind = 'call.created' AND e.detail->>'kind' = 'emergency'),
    count(*) FILTER (WHERE e.kind = 'call.created' AND coalesce(e.detail->>'kind', '') <> 'callback'),
    count(*) FILTER (WHERE e.kind = 'call.answered' AND coalesce(e.detail->>'kind', '') <> 'callback'),
    count(*) FILTER (WHERE e.kind = 'call.answered' AND coalesce(e.detail->>'kind', '') <> 'callback'
                     AND (e.detail->>'wait_ms')::bigint <= 60000),
    count(*) FILTER (WHERE e.kind = 'call.abandoned' AND coalesce(e.detail->>'kind', '') <> 'callback'),
    count(*) FILTER (WHERE e.kind = 'call.abandoned' AND coalesce(e.detail->>'kind', '') <> 'callback'
                     AND (e.detail->>'wait_ms')::bigint < stats_short_abandon_ms())
FROM events e
JOIN calls c ON c.id = e.call_id
JOIN stations st ON st.id::text = c.station
WHERE e.kind IN ('call.created', 'call.answered', 'call.abandoned')
GROUP BY 1, 2;

CREATE FUNCTION service_stats_count() RETURNS trigger LANGUAGE plpgsql AS $$
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
        INSERT INTO station_day_stats AS s (station_id, day, remote_services, emergencies,
            calls_offered, calls_answered, answered_within_60s, calls_abandoned, short_abandoned,
            orders_created, orders_completed, orders_cancelled, escalations)
        VALUES (station, local_day,
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
        ON CONFLICT (station_id, day) DO UPDATE SET
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
        INSERT INTO provider_day_stats AS p (station_id, provider_id, day, offers, accepted,
            declined, timed_out, arrivals, on_time, completed, ratings, rating_sum)
        VALUES (station, provider, local_day,
            (NEW.kind = 'order.offered')::int,
            (NEW.kind = 'order.accepted')::int,
            (NEW.kind = 'order.declined' AND coalesce(NEW.detail->>'reason', '') <> 'timed_out')::int,
            (NEW.kind = 'order.declined' AND coalesce(NEW.detail->>'reason', '') = 'timed_out')::int,
            (NEW.kind = 'order.arrived')::int,
            (NEW.kind = 'order.arrived' AND coalesce((NEW.detail->>'on_time')::boolean, false))::int,
            (NEW.kind = 'order.completed')::int,
            (NEW.kind = 'order.rated')::int,
            CASE WHEN NEW.kind = 'order.rated' THEN coalesce((NEW.detail->>'stars')::int, 0) ELSE 0 END)
        ON CONFLICT (station_id, provider_id, day) DO UPDATE SET
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
CREATE TRIGGER events_service_stats AFTER INSERT ON events
    FOR EACH ROW EXECUTE FUNCTION service_stats_count();
