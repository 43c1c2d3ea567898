-- Revision 4: `users` rebuilt by SQLite's 12-step procedure (sqlite.org/lang_altertable.html),
-- since ALTER TABLE cannot change a column's type or add a CHECK: is_admin becomes an INTEGER
-- that can only be 0 or 1 (the old BOOLEAN had NUMERIC affinity and no check), and last_seen_at
-- gets the index /stats needs. The engine switches foreign keys off around the transaction and
-- runs foreign_key_check before COMMIT, so command_log keeps every reference.
CREATE TABLE new_users (
    id INTEGER NOT NULL,
    telegram_id BIGINT NOT NULL,
    username VARCHAR(64),
    first_name VARCHAR(128),
    last_name VARCHAR(128),
    is_admin INTEGER DEFAULT 0 NOT NULL CHECK (is_admin IN (0, 1)),
    created_at DATETIME DEFAULT CURRENT_TIMESTAMP NOT NULL,
    language_code VARCHAR(16),
    last_seen_at DATETIME,
    PRIMARY KEY (id),
    UNIQUE (telegram_id)
);
INSERT INTO new_users (id, telegram_id, username, first_name, last_name, is_admin, created_at, language_code, last_seen_at)
    SELECT id, telegram_id, username, first_name, last_name, is_admin, created_at, language_code, last_seen_at
    FROM users;
DROP TABLE users;
ALTER TABLE new_users RENAME TO users;
CREATE INDEX ix_users_last_seen_at ON users (last_seen_at);
