-- Trust: the application's own database role, logs it cannot alter, revocation and erasure.
--
-- The application connects as (or switches to) `carebell_app`: it may read and write data
-- but owns nothing, so it cannot drop or alter tables or triggers, and it is not granted
-- UPDATE, DELETE or TRUNCATE on the append-only audit log, event log and ledger. The role is made
-- by deploy/ensure-services.sh (creating roles needs more than a database owner may do);
-- where it does not exist the grants are skipped and the application runs as the owner.

ALTER TABLE residents ADD COLUMN erased_at timestamptz;
ALTER TABLE devices ADD COLUMN revoked_reason text CHECK (length(revoked_reason) <= 500);

-- Erasure may strip free text from the event log (and nothing else may change it): the
-- scrubbing function below sets carebell.erasing for its own transaction only, and the
-- trigger lets an update through only if it leaves everything but `detail` as it was.
CREATE OR REPLACE FUNCTION refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND TG_TABLE_NAME = 'events'
       AND current_setting('carebell.erasing', true) = 'on'
       AND (NEW.id, NEW.at, NEW.kind, NEW.call_id, NEW.offer_id, NEW.operator_id,
            NEW.device_id, NEW.order_id)
           IS NOT DISTINCT FROM
           (OLD.id, OLD.at, OLD.kind, OLD.call_id, OLD.offer_id, OLD.operator_id,
            OLD.device_id, OLD.order_id) THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME;
END;
$$;

-- Removes free-text fields (notes, messages) from the events about one resident. Runs with
-- the owner's rights; the application may call it but cannot update events itself.
CREATE FUNCTION scrub_resident_events(p_resident uuid) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public AS $$
DECLARE
    changed bigint;
BEGIN
    PERFORM set_config('carebell.erasing', 'on', true);
    UPDATE events
    SET detail = detail - 'note' - 'text' - 'message' - 'address' - 'resident_name'
    WHERE (call_id IN (SELECT id FROM calls WHERE resident_id = p_resident)
           OR order_id IN (SELECT id FROM orders WHERE resident_id = p_resident)
           OR device_id IN (SELECT id FROM devices WHERE resident_id = p_resident))
      AND detail ?| ARRAY['note', 'text', 'message', 'address', 'resident_name'];
    GET DIAGNOSTICS changed = ROW_COUNT;
    PERFORM set_config('carebell.erasing', 'off', true);
    RETURN changed;
END;
$$;
REVOKE ALL ON FUNCTION scrub_resident_events(uuid) FROM PUBLIC;

-- Failed sign-ins per account name (known or not, so that a lockout says nothing about which
-- names exist), shared by every node.
CREATE TABLE sign_in_failures (
    kind             text NOT NULL CHECK (kind IN ('operator', 'family', 'provider')),
    username         text NOT NULL CHECK (length(username) <= 256),
    failures         integer NOT NULL DEFAULT 0,
    locked_until     timestamptz,
    last_failure_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (kind, username)
);

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'carebell_app') THEN
        GRANT USAGE ON SCHEMA public TO carebell_app;
        GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO carebell_app;
        GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO carebell_app;
        GRANT EXECUTE ON FUNCTION scrub_resident_events(uuid) TO carebell_app;
        REVOKE UPDATE, DELETE, TRUNCATE ON audit_log, events, ledger_entries,
            ledger_transactions FROM carebell_app;
        REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON _sqlx_migrations FROM carebell_app;
        -- Tables and sequences later migrations make: the same rights. A later append-only
        -- table must revoke UPDATE and DELETE itself.
        ALTER DEFAULT PRIVILEGES IN SCHEMA public
            GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO carebell_app;
        ALTER DEFAULT PRIVILEGES IN SCHEMA public
            GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO carebell_app;
    END IF;
END;
$$;
