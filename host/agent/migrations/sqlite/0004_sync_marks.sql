-- One row the store's `sync` rewrites through its durable connection: a commit that makes every
-- staged write before it durable (the WAL is one sequence) without writing an incident again.
CREATE TABLE sync_marks (id INTEGER PRIMARY KEY CHECK (id = 1), n INTEGER NOT NULL);
