-- The read API lists the newest incidents, all or of one status, without reading every row.
CREATE INDEX incidents_by_opened ON incidents (opened_ms);
CREATE INDEX incidents_by_status ON incidents (status, opened_ms);
