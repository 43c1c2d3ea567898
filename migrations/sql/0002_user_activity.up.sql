-- Revision 2: what the bot needs to know of its users' activity.
ALTER TABLE users ADD COLUMN language_code VARCHAR(16);
ALTER TABLE users ADD COLUMN last_seen_at DATETIME;
