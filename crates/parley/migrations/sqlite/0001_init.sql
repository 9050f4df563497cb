-- Parley schema, SQLite dialect. Times are milliseconds since the Unix epoch.
CREATE TABLE users (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    name          TEXT    NOT NULL,
    email         TEXT    NOT NULL,
    password_hash TEXT    NOT NULL,
    is_deleted    INTEGER NOT NULL DEFAULT 0,
    deleted_at    INTEGER,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    CONSTRAINT users_email_unique UNIQUE (email)
);

CREATE TABLE applications (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    token       TEXT    NOT NULL,
    name        TEXT    NOT NULL,
    chats_count INTEGER NOT NULL DEFAULT 0,
    creator_id  INTEGER NOT NULL REFERENCES users (id),
    webhook_url TEXT,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    CONSTRAINT applications_token_unique UNIQUE (token)
);
CREATE INDEX applications_creator ON applications (creator_id, id);

CREATE TABLE chats (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    application_id INTEGER NOT NULL REFERENCES applications (id),
    number         INTEGER NOT NULL,
    messages_count INTEGER NOT NULL DEFAULT 0,
    creator_id     INTEGER NOT NULL REFERENCES users (id),
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL,
    CONSTRAINT chats_number_unique UNIQUE (application_id, number)
);

CREATE TABLE messages (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    chat_id      INTEGER NOT NULL REFERENCES chats (id),
    number       INTEGER NOT NULL,
    body         TEXT    NOT NULL,
    sender_id    INTEGER NOT NULL REFERENCES users (id),
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    version      INTEGER NOT NULL DEFAULT 0,
    delivered_at INTEGER,
    CONSTRAINT messages_number_unique UNIQUE (chat_id, number)
);
CREATE INDEX messages_chat_created ON messages (chat_id, created_at);

CREATE TABLE user_deletions (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id             INTEGER NOT NULL REFERENCES users (id),
    status              TEXT    NOT NULL, -- pending | cancelled | done
    scheduled_for       INTEGER NOT NULL,
    recovery_token_hash TEXT    NOT NULL,
    created_at          INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL
);
CREATE INDEX user_deletions_due ON user_deletions (status, scheduled_for);
CREATE INDEX user_deletions_user ON user_deletions (user_id, status);
CREATE UNIQUE INDEX user_deletions_token ON user_deletions (recovery_token_hash);

CREATE TABLE action_logs (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id    INTEGER NOT NULL,
    action     TEXT    NOT NULL,
    detail     TEXT    NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX action_logs_user ON action_logs (user_id, id);
