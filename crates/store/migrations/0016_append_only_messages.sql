-- refuse_change() read NEW.kind in the same condition as the table name, and PL/pgSQL does not
-- short-circuit: on audit_log or the ledger (no column "kind") an owner's UPDATE failed with
-- 'record "new" has no field "kind"' instead of saying the table is append-only. Refused all
-- the same, but the message must say why. The events check is now nested.
CREATE OR REPLACE FUNCTION refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND TG_TABLE_NAME = 'events'
       AND current_setting('carebell.erasing', true) = 'on' THEN
        IF (NEW.id, NEW.at, NEW.kind, NEW.call_id, NEW.offer_id, NEW.operator_id,
            NEW.device_id, NEW.order_id)
           IS NOT DISTINCT FROM
           (OLD.id, OLD.at, OLD.kind, OLD.call_id, OLD.offer_id, OLD.operator_id,
            OLD.device_id, OLD.order_id) THEN
            RETURN NEW;
        END IF;
    END IF;
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME;
END;
$$;

-- The ledger refuses TRUNCATE by its owner too, like the event and audit logs.
CREATE TRIGGER ledger_entries_no_truncate BEFORE TRUNCATE ON ledger_entries
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();
CREATE TRIGGER ledger_transactions_no_truncate BEFORE TRUNCATE ON ledger_transactions
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();
