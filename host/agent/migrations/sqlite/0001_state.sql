-- The state of one host: incidents, each agent's state (a hint for recovery), the guard book.
-- Each row carries its JSON as written and a MAC under the host key over the table, the key
-- and the JSON: a row changed or moved by hand is refused.
CREATE TABLE incidents (
    id          TEXT PRIMARY KEY NOT NULL,
    agent       TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    status      TEXT NOT NULL,
    opened_ms   INTEGER NOT NULL,
    body        TEXT NOT NULL,
    mac         TEXT NOT NULL
);
CREATE INDEX incidents_by_fingerprint ON incidents (agent, fingerprint, opened_ms);

CREATE TABLE agent_states (
    agent TEXT PRIMARY KEY NOT NULL,
    body  TEXT NOT NULL,
    mac   TEXT NOT NULL
);

CREATE TABLE guard (
    id   INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
    body TEXT NOT NULL,
    mac  TEXT NOT NULL
);
