-- Revision 1: exactly the schema the old app's create-all (SQLAlchemy `db.init_db()`) made.
-- It has no .down.sql on purpose: undoing it would delete every user.
CREATE TABLE users (
	id INTEGER NOT NULL,
	telegram_id BIGINT NOT NULL,
	username VARCHAR(64),
	first_name VARCHAR(128),
	last_name VARCHAR(128),
	is_admin BOOLEAN DEFAULT 0 NOT NULL,
	created_at DATETIME DEFAULT CURRENT_TIMESTAMP NOT NULL,
	PRIMARY KEY (id),
	UNIQUE (telegram_id)
);
