-- Back to revision 3's `users`: BOOLEAN is_admin without the check, no last_seen_at index.
CREATE TABLE new_users (
    id INTEGER NOT NULL,
    telegram_id BIGINT NOT NULL,
    username VARCHAR(64),
    first_name VARCHAR(128),
    last_name VARCHAR(128),
    is_admin BOOLEAN DEFAULT 0 NOT NULL,
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
