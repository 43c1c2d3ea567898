-- Revision 3: a log of the commands users send; /stats reads it.
CREATE TABLE command_log (
    id INTEGER PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    command VARCHAR(32) NOT NULL,
    used_at DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP
);
CREATE INDEX ix_command_log_user_id ON command_log (user_id);
CREATE INDEX ix_command_log_used_at ON command_log (used_at);
