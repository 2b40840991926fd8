-- Alerts a host standing by accepted for the host that holds the state: each notification's
-- body (checked, authenticated and redacted by the host that stored it, and sealed under the
-- deployment's host key: `mac` over the table, `via` and the body), taken up — onto the audit
-- chain — and removed by the holder, oldest first. A row added by hand is refused.
CREATE TABLE inbox (
    id          BIGSERIAL PRIMARY KEY,
    via         TEXT NOT NULL,
    body        TEXT NOT NULL,
    mac         TEXT NOT NULL,
    received_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Where the holder serves its API, sealed under the host key (`url_mac`): a host standing by
-- passes answers and reads on to it, and sends them nowhere a row edited by hand names.
ALTER TABLE holder ADD COLUMN url TEXT;
ALTER TABLE holder ADD COLUMN url_mac TEXT;
