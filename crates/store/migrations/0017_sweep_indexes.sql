-- Indexes for the sweeps that run four times a second on every node.
--
-- The family cascade looks for emergencies unanswered for long. Without this index it read
-- every waiting call to find them: during a flood of thousands of waiting emergencies, none yet
-- due, that read was a large share of the database.
CREATE INDEX calls_cascade_due ON calls (created_at)
    WHERE kind = 'emergency' AND state IN ('queued', 'offered') AND cascade_started_at IS NULL;

-- Alarms by their call. The cascade's search for long-offline devices joins calls to alarms,
-- and a plan made while the alarms table was small went from the calls and read every alarm
-- for each one: at 100,000 tablets, with 2,900 offline alarms from the ramp's churn, five
-- such statements ran for 20 s each and held PostgreSQL's two cores until the fleet fell
-- away. Ending a call also finds its alarms by call.
CREATE INDEX alarms_call ON alarms (call_id) WHERE call_id IS NOT NULL;
