-- The audit chain, shared by the hosts of one deployment: each record exactly as the holding
-- host wrote it in its local file (`line`), with its links. A host appends only while it holds
-- the state (the holder's token, checked in the same transaction) and only on the head, so the
-- chain has one writer at a time and no fork; a host that takes the state over continues it.
CREATE TABLE audit (
    seq  BIGINT PRIMARY KEY,
    hash TEXT NOT NULL,
    prev TEXT NOT NULL,
    line TEXT NOT NULL
);
