-- Rinnovo's tables. Applied by `rinnovo db init` and by the test fixtures; every statement is
-- idempotent so applying it twice is harmless.

-- The inbox: every notification the provider delivered, stored before it is acknowledged.
CREATE TABLE IF NOT EXISTS events (
    id              bigserial PRIMARY KEY,
    kind            text NOT NULL CHECK (kind IN ('ipn', 'lcn', 'ins')),
    -- Same notification delivered again (provider retry) => same key; see README "Dedupe".
    dedupe_key      text NOT NULL UNIQUE,
    status          text NOT NULL DEFAULT 'received'
                    CHECK (status IN ('received', 'enqueued', 'processed', 'failed', 'ignored')),
    raw_body        bytea NOT NULL,
    content_type    text NOT NULL,
    headers         jsonb NOT NULL DEFAULT '{}',
    fields          jsonb NOT NULL,          -- '{}': read from raw_body when shown (older rows:
                                             -- name -> [values] as parsed at receipt; api: {})
    signature_algo  text NOT NULL,           -- sha3-256 | sha256 | md5 | ins-md5
    key_index       integer NOT NULL,        -- which configured key verified it (rotation)
    summary         text NOT NULL DEFAULT '',-- e.g. "COMPLETE", "ACTIVE", "ORDER_CREATED"
    license_codes   text[] NOT NULL DEFAULT '{}',
    test            boolean NOT NULL DEFAULT false,
    received_at     timestamptz NOT NULL DEFAULT now(),
    enqueued_at     timestamptz,
    processed_at    timestamptz,
    deliveries      integer NOT NULL DEFAULT 1,  -- how many times the provider sent it
    last_delivery_at timestamptz NOT NULL DEFAULT now(),
    attempts        integer NOT NULL DEFAULT 0,  -- how many times a worker tried it
    last_error      text,
    last_traceback  text,
    outcome         text                     -- what applying it did, or why it was ignored
);
-- Bodies and fields are a few KiB each: lz4 compresses them several times faster than the default
-- pglz, which the receiver waits for on every INSERT. Servers built without lz4 keep pglz.
DO $$
BEGIN
    ALTER TABLE events ALTER COLUMN raw_body SET COMPRESSION lz4,
                       ALTER COLUMN fields SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported THEN
    NULL;
END $$;
CREATE INDEX IF NOT EXISTS events_received_at_idx ON events (received_at DESC);
CREATE INDEX IF NOT EXISTS events_status_idx ON events (status, received_at DESC);
CREATE INDEX IF NOT EXISTS events_license_codes_idx ON events USING gin (license_codes);
-- The relay reads only this: events not applied yet (never sent, or sent long ago).
DROP INDEX IF EXISTS events_unenqueued_idx;
CREATE INDEX IF NOT EXISTS events_waiting_idx ON events (id) WHERE status IN ('received', 'enqueued');
-- When the event's job must have started at the latest: a retry's, by the retry policy (sending
-- it sets enqueued_at). The relay sends again what is overdue (README, "Recovery objective").
ALTER TABLE events ADD COLUMN IF NOT EXISTS due_at timestamptz;

-- Who last handed an event to the workers: the attempt it starts is recorded as theirs.
ALTER TABLE events ADD COLUMN IF NOT EXISTS enqueued_by text NOT NULL DEFAULT 'delivery';

-- Every attempt at applying an event, never overwritten (a replay adds one): when, who asked
-- for it, what it did. Written in the same transaction as the attempt's outcome.
CREATE TABLE IF NOT EXISTS event_attempts (
    id              bigserial PRIMARY KEY,
    event_id        bigint NOT NULL REFERENCES events (id),
    at              timestamptz NOT NULL DEFAULT now(),
    -- delivery | relay | replay-cli | replay-api | replay-page (events.REQUESTERS)
    requested_by    text NOT NULL,
    enqueued_at     timestamptz,             -- when it was handed to the workers
    retry           integer NOT NULL DEFAULT 0,  -- the worker's retry of that hand-over (0: first)
    status          text NOT NULL CHECK (status IN ('processed', 'ignored', 'failed', 'retrying')),
    outcome         text NOT NULL DEFAULT '' -- what applying it did, or the error
);
CREATE INDEX IF NOT EXISTS event_attempts_event_idx ON event_attempts (event_id, id);

CREATE TABLE IF NOT EXISTS customers (
    id              bigserial PRIMARY KEY,
    email           text NOT NULL,
    first_name      text NOT NULL DEFAULT '',
    last_name       text NOT NULL DEFAULT '',
    company         text NOT NULL DEFAULT '',
    locale          text NOT NULL DEFAULT '',
    -- The provider's customer reference when it sends one, else the lowercased email.
    customer_key    text NOT NULL UNIQUE,
    last_event_id   bigint,                   -- the newest event that set these details
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- Columns added after a table first shipped, for databases created before them.
ALTER TABLE customers ADD COLUMN IF NOT EXISTS last_event_id bigint;

CREATE TABLE IF NOT EXISTS subscriptions (
    id                  bigserial PRIMARY KEY,
    license_code        text NOT NULL UNIQUE,
    customer_id         bigint NOT NULL REFERENCES customers (id),
    product_code        text NOT NULL,
    product             text NOT NULL,
    edition             text NOT NULL DEFAULT '',
    cycle               text NOT NULL DEFAULT 'annual' CHECK (cycle IN ('monthly', 'annual', 'lifetime')),
    quantity            integer NOT NULL DEFAULT 1,
    status              text NOT NULL
                        CHECK (status IN ('pending', 'active', 'past_due', 'expired', 'canceled', 'refunded')),
    auto_renew          boolean NOT NULL DEFAULT false,
    test                boolean NOT NULL DEFAULT false,
    currency            text NOT NULL DEFAULT '',
    price_paid          numeric NOT NULL DEFAULT 0,  -- what the current period cost
    period_start        timestamptz,          -- purchase, last renewal or restart instant
    expires_at          timestamptz,          -- as the provider reports it
    expected_expires_at timestamptz,          -- as the catalog's policy predicts it
    policy_mismatch     boolean NOT NULL DEFAULT false,
    last_order_ref      text NOT NULL DEFAULT '',
    last_change_at      timestamptz,          -- provider time of the newest change applied
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);
-- What the order that bought the current plan cost (the `maintenance` credit); a renewal leaves it.
ALTER TABLE subscriptions ADD COLUMN IF NOT EXISTS purchase_price numeric;
CREATE INDEX IF NOT EXISTS subscriptions_customer_idx ON subscriptions (customer_id);
-- The reminder scan walks only live subscriptions in expiry order.
CREATE INDEX IF NOT EXISTS subscriptions_live_expiry_idx ON subscriptions (expires_at)
    WHERE status IN ('active', 'past_due');

-- Orders that touched a subscription: one row per (order reference, license, order status).
CREATE TABLE IF NOT EXISTS orders (
    id              bigserial PRIMARY KEY,
    subscription_id bigint NOT NULL REFERENCES subscriptions (id),
    event_id        bigint NOT NULL REFERENCES events (id),
    refno           text NOT NULL,
    kind            text NOT NULL,            -- new | renewal | upgrade | refund | cancel ...
    order_status    text NOT NULL,
    amount          numeric NOT NULL DEFAULT 0,
    currency        text NOT NULL DEFAULT '',
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (refno, subscription_id, order_status)
);
-- Amounts keep their currency's own minor unit (3 decimals for BHD, KWD, JOD, OMR, TND; none for
-- JPY): the code rounds them, the column keeps what it is given. Databases created when amounts
-- were numeric(14, 2) are widened once (no rewrite: only the limit is lifted).
DO $$
DECLARE
    col record;
BEGIN
    FOR col IN
        SELECT table_name, column_name FROM information_schema.columns
        WHERE table_schema = current_schema()
          AND (table_name, column_name) IN (('subscriptions', 'price_paid'), ('orders', 'amount'))
          AND data_type = 'numeric' AND numeric_scale IS NOT NULL
    LOOP
        EXECUTE format('ALTER TABLE %I ALTER COLUMN %I TYPE numeric', col.table_name,
                       col.column_name);
    END LOOP;
END $$;

-- Every change to a subscription: what, from which event, before -> after.
CREATE TABLE IF NOT EXISTS subscription_history (
    id              bigserial PRIMARY KEY,
    subscription_id bigint NOT NULL REFERENCES subscriptions (id),
    event_id        bigint REFERENCES events (id),
    change          text NOT NULL,
    before          jsonb NOT NULL DEFAULT '{}',
    after           jsonb NOT NULL DEFAULT '{}',
    note            text NOT NULL DEFAULT '',
    at              timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS subscription_history_sub_idx ON subscription_history (subscription_id, id);
CREATE INDEX IF NOT EXISTS subscription_history_event_idx ON subscription_history (event_id);

-- The email outbox: one row per fact worth telling the customer, never two.
CREATE TABLE IF NOT EXISTS emails (
    id              bigserial PRIMARY KEY,
    subscription_id bigint NOT NULL REFERENCES subscriptions (id),
    event_id        bigint REFERENCES events (id),
    kind            text NOT NULL,
    fact            text NOT NULL,            -- e.g. order REFNO, "2026-06-30T00:00:00Z/7"
    to_address      text NOT NULL,
    locale          text NOT NULL,
    context         jsonb NOT NULL DEFAULT '{}',
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'sending', 'sent', 'failed')),
    message_id      text NOT NULL,
    attempts        integer NOT NULL DEFAULT 0,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    enqueued_at     timestamptz,
    sent_at         timestamptz,
    UNIQUE (subscription_id, kind, fact)
);
-- When the email's job must have started at the latest (a retry's, by the retry policy), which
-- retry job holds it (a stray copy of an older job leaves it alone), and why a failed one failed
-- (`interrupted`: it may have been delivered). README, "Recovery objective".
ALTER TABLE emails ADD COLUMN IF NOT EXISTS due_at timestamptz;
ALTER TABLE emails ADD COLUMN IF NOT EXISTS retry_job text;
ALTER TABLE emails ADD COLUMN IF NOT EXISTS failure text;
CREATE INDEX IF NOT EXISTS emails_failure_idx ON emails (failure, id) WHERE status = 'failed';
CREATE INDEX IF NOT EXISTS emails_status_idx ON emails (status, id);
CREATE INDEX IF NOT EXISTS emails_to_idx ON emails (to_address);

-- Dunning and unsubscribe: `suppressed` (the customer unsubscribed from the kind's family) and
-- `off` (EMAILS_OFF: written to show what the customer would have received, never sent). The
-- constraint is replaced by name, once, so databases created with the older list take the new
-- one (later applications leave it, and the table, alone).
DO $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_constraint
        WHERE conrelid = 'emails'::regclass AND conname = 'emails_status_check'
          AND pg_get_constraintdef(oid) LIKE '%''suppressed''%''off''%'
    ) THEN
        ALTER TABLE emails DROP CONSTRAINT IF EXISTS emails_status_check;
        ALTER TABLE emails ADD CONSTRAINT emails_status_check
            CHECK (status IN ('pending', 'sending', 'sent', 'failed', 'suppressed', 'off'));
    END IF;
END $$;

-- When the current past-due episode began (NULL unless past_due): the dunning sequence's day 0,
-- and its facts' episode.
ALTER TABLE subscriptions ADD COLUMN IF NOT EXISTS past_due_since timestamptz;
-- Subscriptions already past due before the column existed: their last change stands in for the
-- failure, so their sequence and their recovery email follow like any other's.
UPDATE subscriptions SET past_due_since = updated_at
WHERE status = 'past_due' AND past_due_since IS NULL;
CREATE INDEX IF NOT EXISTS subscriptions_past_due_idx ON subscriptions (past_due_since)
    WHERE status = 'past_due';
-- Recoveries (past_due -> active) are counted for /metrics from the history, through this.
CREATE INDEX IF NOT EXISTS subscription_history_recovered_idx ON subscription_history (id)
    WHERE before ->> 'status' = 'past_due' AND after ->> 'status' = 'active';

-- Addresses that unsubscribed from a family of emails (one-click, the page, or an operator).
-- Lifting one deletes its row.
CREATE TABLE IF NOT EXISTS email_suppressions (
    address         text NOT NULL,            -- lowercased
    family          text NOT NULL,            -- e.g. 'reminders'
    customer_id     bigint REFERENCES customers (id),
    how             text NOT NULL,            -- one-click | page
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (address, family)
);

-- Sweeps of the provider's API (`rinnovo reconcile`): the window searched, what was found, how
-- each ended. The next sweep starts a day before the last successful one that applied its
-- differences over every subscription (the provider's date filters are per day).
CREATE TABLE IF NOT EXISTS reconcile_runs (
    id                    bigserial PRIMARY KEY,
    window_start          date NOT NULL,        -- ModifiedAfter and StartDate
    window_end            date NOT NULL,        -- EndDate of the orders searched: the sweep's day
    license_code          text,                 -- one subscription (--license); NULL: all
    dry_run               boolean NOT NULL,
    outcome               text NOT NULL DEFAULT 'running'
                          CHECK (outcome IN ('running', 'succeeded', 'failed')),
    error                 text,
    subscriptions_checked integer NOT NULL DEFAULT 0,
    orders_checked        integer NOT NULL DEFAULT 0,
    differing             integer NOT NULL DEFAULT 0,
    deferred              integer NOT NULL DEFAULT 0,  -- young orders left for the next sweep
    started_at            timestamptz NOT NULL DEFAULT now(),
    finished_at           timestamptz
);
CREATE INDEX IF NOT EXISTS reconcile_runs_started_idx ON reconcile_runs (started_at DESC);

-- Reconciliation events (kind `api`): the provider's subscription or order object, stored and
-- applied like a notification. Older databases get the wider CHECK once.
DO $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_constraint
        WHERE conrelid = 'events'::regclass AND conname = 'events_kind_check'
          AND pg_get_constraintdef(oid) LIKE '%''api''%'
    ) THEN
        ALTER TABLE events DROP CONSTRAINT IF EXISTS events_kind_check;
        ALTER TABLE events ADD CONSTRAINT events_kind_check
            CHECK (kind IN ('ipn', 'lcn', 'ins', 'api'));
    END IF;
END $$;

-- Who started a sweep: the command, the clock's daily sweep, or the watchdog's lookups (which
-- cover a few subscriptions, so they never open the next sweep's window).
ALTER TABLE reconcile_runs ADD COLUMN IF NOT EXISTS source text NOT NULL DEFAULT 'command';
ALTER TABLE reconcile_runs ADD COLUMN IF NOT EXISTS events_stored integer NOT NULL DEFAULT 0;

-- What each sweep found, and the reconciliation event that applies it (none for a dry run).
CREATE TABLE IF NOT EXISTS reconcile_differences (
    id          bigserial PRIMARY KEY,
    run_id      bigint NOT NULL REFERENCES reconcile_runs (id) ON DELETE CASCADE,
    subject     text NOT NULL,          -- "subscription LICENSE" or "order REFNO"
    what        text NOT NULL,
    rinnovo     text NOT NULL,
    provider    text NOT NULL,
    event_id    bigint REFERENCES events (id) ON DELETE SET NULL
);
CREATE INDEX IF NOT EXISTS reconcile_differences_run_idx ON reconcile_differences (run_id, id);
