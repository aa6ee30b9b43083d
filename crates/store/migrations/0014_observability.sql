-- What the metrics endpoint reads at each scrape: open alarms by kind, without a pass over
-- every alarm ever received.
CREATE INDEX alarms_open ON alarms (kind) WHERE resolved_at IS NULL AND cleared_at IS NULL;
