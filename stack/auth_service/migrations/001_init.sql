-- auth database: users, oauth identities, email verifications (docs/wiring.md)
CREATE TABLE users (
    id                uuid PRIMARY KEY,
    email             text NOT NULL UNIQUE CHECK (email = lower(email)),
    full_name         text NOT NULL,
    password_hash     text NULL,
    email_verified_at timestamptz NULL,
    created_at        timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE identities (
    id         uuid PRIMARY KEY,
    user_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    provider   text NOT NULL,
    subject    text NOT NULL,
    email      text NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (provider, subject)
);
CREATE INDEX identities_user_id ON identities (user_id);

CREATE TABLE email_verifications (
    id         uuid PRIMARY KEY,
    user_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    token_hash text NOT NULL UNIQUE,
    expires_at timestamptz NOT NULL,
    used_at    timestamptz NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX email_verifications_user_id ON email_verifications (user_id);

-- outbox of "new user" announcements to the backend (POST /internal/users), retried until delivered
CREATE TABLE announcements (
    id              bigserial PRIMARY KEY,
    user_id         uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    body            text NOT NULL,
    request_id      text NULL,
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text NULL,
    delivered_at    timestamptz NULL,
    failed_at       timestamptz NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX announcements_pending ON announcements (next_attempt_at)
    WHERE delivered_at IS NULL AND failed_at IS NULL;
