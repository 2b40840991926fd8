-- The state of one host, shared through PostgreSQL: incidents, each agent's state (a hint for
-- recovery), the guard book. Each row carries its JSON as written and a MAC under the host key
-- over the table, the key and the JSON: a row changed or moved by hand is refused.
CREATE TABLE incidents (
    id          TEXT PRIMARY KEY,
    agent       TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    status      TEXT NOT NULL,
    opened_ms   BIGINT NOT NULL,
    seq         BIGSERIAL NOT NULL,
    -- When the row was last written: retention removes closed incidents by it.
    changed_ms  BIGINT NOT NULL,
    body        TEXT NOT NULL,
    mac         TEXT NOT NULL
);
CREATE INDEX incidents_by_fingerprint ON incidents (agent, fingerprint, opened_ms);
CREATE INDEX incidents_by_opened ON incidents (opened_ms);
CREATE INDEX incidents_by_status ON incidents (status, opened_ms);
CREATE INDEX incidents_by_change ON incidents (agent, changed_ms);

CREATE TABLE agent_states (
    agent TEXT PRIMARY KEY,
    body  TEXT NOT NULL,
    mac   TEXT NOT NULL
);

CREATE TABLE guard (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    body TEXT NOT NULL,
    mac  TEXT NOT NULL
);

-- Who holds the state. A host takes the database's advisory lock, then raises `token`; every
-- write it makes checks, in the same transaction, that the token is still its own. A host that
-- lost its lock (its connection dropped, it was paused) cannot write after another took over.
-- `key_id` names the host key the rows are sealed with, so a host with another key is told so.
CREATE TABLE holder (
    id     INTEGER PRIMARY KEY CHECK (id = 1),
    token  BIGINT NOT NULL,
    key_id TEXT NOT NULL,
    host   TEXT NOT NULL,
    since  TIMESTAMPTZ NOT NULL DEFAULT now()
);
