-- Parley schema, MySQL 8 / MariaDB 10.11 dialect (InnoDB, utf8mb4). Times are milliseconds
-- since the Unix epoch. Same tables, keys and indices as migrations/sqlite/0001_init.sql.
--
-- Collations: text is utf8mb4_unicode_ci (exists on both servers; MySQL 8's default
-- utf8mb4_0900_ai_ci does not exist on MariaDB 10.11), so search and LIKE are
-- case-insensitive. Keys that SQLite compares byte for byte (tokens, e-mail addresses, hashes)
-- are utf8mb4_bin: under a _ci collation two tokens differing only in case, or 'ß' and 'ss'
-- in two addresses, would collide.
--
-- FULLTEXT on messages.body serves search/mysql.rs. InnoDB records at index creation whether
-- the index uses the default stopword list ("the", "will", "about", …: such words are never
-- indexed, and a query that requires one finds nothing); this session's setting is what it
-- records, so turn stopwords off for the CREATE. A later rebuild of the index (ALTER TABLE …
-- FORCE, dropping and re-adding it) must do the same. Words shorter than the server-wide
-- innodb_ft_min_token_size (default 3, both servers) are never indexed; search uses LIKE for those.
SET SESSION innodb_ft_enable_stopword = OFF;

CREATE TABLE users (
    id            BIGINT       NOT NULL AUTO_INCREMENT,
    name          VARCHAR(255) NOT NULL,
    email         VARCHAR(255) COLLATE utf8mb4_bin NOT NULL,
    password_hash VARCHAR(255) COLLATE utf8mb4_bin NOT NULL,
    is_deleted    BOOLEAN      NOT NULL DEFAULT FALSE,
    deleted_at    BIGINT,
    created_at    BIGINT       NOT NULL,
    updated_at    BIGINT       NOT NULL,
    PRIMARY KEY (id),
    CONSTRAINT users_email_unique UNIQUE (email)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

CREATE TABLE applications (
    id          BIGINT       NOT NULL AUTO_INCREMENT,
    token       VARCHAR(64)  COLLATE utf8mb4_bin NOT NULL,
    name        VARCHAR(255) NOT NULL,
    chats_count BIGINT       NOT NULL DEFAULT 0,
    creator_id  BIGINT       NOT NULL,
    webhook_url TEXT,
    created_at  BIGINT       NOT NULL,
    updated_at  BIGINT       NOT NULL,
    PRIMARY KEY (id),
    CONSTRAINT applications_token_unique UNIQUE (token),
    INDEX applications_creator (creator_id, id),
    CONSTRAINT applications_creator_fk FOREIGN KEY (creator_id) REFERENCES users (id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

CREATE TABLE chats (
    id             BIGINT NOT NULL AUTO_INCREMENT,
    application_id BIGINT NOT NULL,
    number         BIGINT NOT NULL,
    messages_count BIGINT NOT NULL DEFAULT 0,
    creator_id     BIGINT NOT NULL,
    created_at     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL,
    PRIMARY KEY (id),
    CONSTRAINT chats_number_unique UNIQUE (application_id, number),
    CONSTRAINT chats_application_fk FOREIGN KEY (application_id) REFERENCES applications (id),
    CONSTRAINT chats_creator_fk FOREIGN KEY (creator_id) REFERENCES users (id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

-- MEDIUMTEXT: a body may be 64 KiB, one byte more than TEXT holds.
CREATE TABLE messages (
    id           BIGINT     NOT NULL AUTO_INCREMENT,
    chat_id      BIGINT     NOT NULL,
    number       BIGINT     NOT NULL,
    body         MEDIUMTEXT NOT NULL,
    sender_id    BIGINT     NOT NULL,
    created_at   BIGINT     NOT NULL,
    updated_at   BIGINT     NOT NULL,
    version      BIGINT     NOT NULL DEFAULT 0,
    delivered_at BIGINT,
    PRIMARY KEY (id),
    CONSTRAINT messages_number_unique UNIQUE (chat_id, number),
    INDEX messages_chat_created (chat_id, created_at),
    FULLTEXT INDEX messages_body_fulltext (body),
    CONSTRAINT messages_chat_fk FOREIGN KEY (chat_id) REFERENCES chats (id),
    CONSTRAINT messages_sender_fk FOREIGN KEY (sender_id) REFERENCES users (id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

CREATE TABLE user_deletions (
    id                  BIGINT       NOT NULL AUTO_INCREMENT,
    user_id             BIGINT       NOT NULL,
    status              VARCHAR(16)  NOT NULL, -- pending | cancelled | done
    scheduled_for       BIGINT       NOT NULL,
    recovery_token_hash VARCHAR(255) COLLATE utf8mb4_bin NOT NULL,
    created_at          BIGINT       NOT NULL,
    updated_at          BIGINT       NOT NULL,
    PRIMARY KEY (id),
    INDEX user_deletions_due (status, scheduled_for),
    INDEX user_deletions_user (user_id, status),
    CONSTRAINT user_deletions_token UNIQUE (recovery_token_hash),
    CONSTRAINT user_deletions_user_fk FOREIGN KEY (user_id) REFERENCES users (id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

CREATE TABLE action_logs (
    id         BIGINT NOT NULL AUTO_INCREMENT,
    user_id    BIGINT NOT NULL,
    action     TEXT   NOT NULL,
    detail     TEXT   NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (id),
    INDEX action_logs_user (user_id, id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

SET SESSION innodb_ft_enable_stopword = DEFAULT;
