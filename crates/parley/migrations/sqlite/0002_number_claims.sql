-- Blocks of numbers claimed by a shared sequencer (Redis), per scope key. Every number a
-- shared sequencer hands out lies in a claimed block, so `claimed` is above every number ever
-- handed out in the scope, in flight or not: re-seeding from it never reuses one.
CREATE TABLE number_claims (
    scope      TEXT    PRIMARY KEY,
    claimed    INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
