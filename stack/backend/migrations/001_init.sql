-- Backend schema (docs/wiring.md "PostgreSQL tables").
CREATE TABLE IF NOT EXISTS profiles (
    user_id     uuid PRIMARY KEY,
    email       text NOT NULL,
    full_name   text NOT NULL DEFAULT '',
    plan        text NOT NULL DEFAULT 'free',
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS threads (
    id          uuid PRIMARY KEY,
    user_id     uuid NOT NULL,
    title       text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS threads_user_idx ON threads (user_id, updated_at DESC);

CREATE TABLE IF NOT EXISTS messages (
    id                uuid PRIMARY KEY,
    thread_id         uuid NOT NULL REFERENCES threads (id) ON DELETE CASCADE,
    user_id           uuid NOT NULL,
    role              text NOT NULL CHECK (role IN ('user', 'assistant')),
    content           text NOT NULL,
    agent             text NULL,
    request_id        text NULL,
    run_id            uuid NULL,
    prompt_tokens     integer NULL,
    completion_tokens integer NULL,
    created_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS messages_thread_idx ON messages (thread_id, created_at);
CREATE INDEX IF NOT EXISTS messages_request_idx ON messages (request_id);

CREATE TABLE IF NOT EXISTS invoices (
    id                uuid PRIMARY KEY,
    user_id           uuid NOT NULL,
    period            text NOT NULL,
    total_usd         numeric(14, 6) NOT NULL,
    prompt_tokens     bigint NOT NULL,
    completion_tokens bigint NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (user_id, period)
);

CREATE TABLE IF NOT EXISTS invoice_lines (
    id                uuid PRIMARY KEY,
    invoice_id        uuid NOT NULL REFERENCES invoices (id) ON DELETE CASCADE,
    agent             text NOT NULL,
    model             text NOT NULL,
    prompt_tokens     bigint NOT NULL,
    completion_tokens bigint NOT NULL,
    amount_usd        numeric(14, 6) NOT NULL
);
CREATE INDEX IF NOT EXISTS invoice_lines_invoice_idx ON invoice_lines (invoice_id);

-- One row per LLM call, written in the same transaction as the turn's messages;
-- the flusher copies it into ClickHouse analytics.usage_events and sets flushed_at.
CREATE TABLE IF NOT EXISTS usage_outbox (
    event_id          uuid PRIMARY KEY,
    request_id        text NULL,
    user_id           uuid NOT NULL,
    thread_id         uuid NOT NULL,
    run_id            uuid NOT NULL,
    agent             text NOT NULL,
    model             text NOT NULL,
    prompt_tokens     integer NOT NULL,
    completion_tokens integer NOT NULL,
    cost_usd          numeric(18, 6) NOT NULL,
    created_at        timestamptz NOT NULL,
    flushed_at        timestamptz NULL
);
CREATE INDEX IF NOT EXISTS usage_outbox_pending_idx ON usage_outbox (created_at) WHERE flushed_at IS NULL;
