-- Retention: when each incident was last written, so closed ones can be removed after
-- `limits.keep_closed` (the audit keeps their history). Rows from before count from when they
-- were opened.
ALTER TABLE incidents ADD COLUMN changed_ms INTEGER NOT NULL DEFAULT 0;
UPDATE incidents SET changed_ms = opened_ms;
CREATE INDEX incidents_by_change ON incidents (agent, changed_ms);
