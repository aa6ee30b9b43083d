-- The family cascade sweep looks for emergencies unanswered for long, four times a second on
-- every node. Without this index it read every waiting call to find them: during a flood of
-- thousands of waiting emergencies, none yet due, that read was a large share of the database.
CREATE INDEX calls_cascade_due ON calls (created_at)
    WHERE kind = 'emergency' AND state IN ('queued', 'offered') AND cascade_started_at IS NULL;
