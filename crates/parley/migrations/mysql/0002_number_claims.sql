-- Blocks of numbers claimed by a shared sequencer (Redis), per scope key. Every number a
-- shared sequencer hands out lies in a claimed block, so `claimed` is above every number ever
-- handed out in the scope, in flight or not: re-seeding from it never reuses one.
-- utf8mb4_bin: scope keys hold application tokens, which are case-sensitive.
CREATE TABLE number_claims (
    scope      VARCHAR(255) COLLATE utf8mb4_bin NOT NULL,
    claimed    BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (scope)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;
