-- Revision 5: the bot under Telegram's real rules.
--
-- handled_updates: Telegram delivers an update again when the bot did not confirm it (a restart
-- mid-batch, a lost getUpdates answer). The bot writes each update's id in the same transaction
-- as what the update caused, so a second delivery finds it and changes nothing. The bot keeps two
-- days of ids: Telegram re-delivers within hours, and after a week without updates it may start
-- the ids over at random, when an old id must no longer be there. The index on handled_at lets
-- the bot trim them in small batches.
--
-- stats_users_hourly, stats_commands_hourly: /stats counted every user and grouped a day of
-- command_log (seconds at 10M users). These keep the same numbers per hour, up to date in the
-- transaction that changes users or command_log (triggers, so any writer keeps them right):
-- per hour, the users registered then and the users last seen then (each user counts in exactly
-- one hour of each), and the uses of each command. /stats sums one row per hour (a few ms for
-- years of hours), whatever the number of users. The hour of a timestamp SQLite cannot read is
-- ''; a NULL last_seen_at counts nowhere. An hour keeps at most 100 commands of its own; further
-- distinct names that hour count under '' ("others"), so no flood of made-up commands makes
-- /stats slow. The bot trims command hours older than two days. The migration fills the
-- summaries from the rows there are (a pass over users: about 25 s at 10M users).
CREATE TABLE handled_updates (
    update_id INTEGER PRIMARY KEY,
    handled_at DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP
);
CREATE INDEX ix_handled_updates_handled_at ON handled_updates (handled_at);

CREATE TABLE stats_users_hourly (
    hour TEXT NOT NULL PRIMARY KEY,
    registered INTEGER NOT NULL DEFAULT 0,
    last_seen INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;

CREATE TABLE stats_commands_hourly (
    hour TEXT NOT NULL,
    command TEXT NOT NULL,
    uses INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (hour, command)
) WITHOUT ROWID;

INSERT INTO stats_users_hourly (hour, registered)
    SELECT coalesce(strftime('%Y-%m-%d %H:00:00', created_at), ''), count(*)
    FROM users GROUP BY 1;
INSERT INTO stats_users_hourly (hour, last_seen)
    SELECT coalesce(strftime('%Y-%m-%d %H:00:00', last_seen_at), ''), count(*)
    FROM users WHERE last_seen_at IS NOT NULL GROUP BY 1
    ON CONFLICT (hour) DO UPDATE SET last_seen = excluded.last_seen;
INSERT INTO stats_commands_hourly (hour, command, uses)
    SELECT coalesce(strftime('%Y-%m-%d %H:00:00', used_at), ''), command, count(*)
    FROM command_log WHERE used_at >= datetime('now', '-2 days') GROUP BY 1, 2;

CREATE TRIGGER stats_user_added AFTER INSERT ON users BEGIN
    INSERT INTO stats_users_hourly (hour, registered)
        VALUES (coalesce(strftime('%Y-%m-%d %H:00:00', new.created_at), ''), 1)
        ON CONFLICT (hour) DO UPDATE SET registered = registered + 1;
    INSERT INTO stats_users_hourly (hour, last_seen)
        SELECT coalesce(strftime('%Y-%m-%d %H:00:00', new.last_seen_at), ''), 1
        WHERE new.last_seen_at IS NOT NULL
        ON CONFLICT (hour) DO UPDATE SET last_seen = last_seen + 1;
END;

CREATE TRIGGER stats_user_removed AFTER DELETE ON users BEGIN
    UPDATE stats_users_hourly SET registered = registered - 1
        WHERE hour = coalesce(strftime('%Y-%m-%d %H:00:00', old.created_at), '');
    UPDATE stats_users_hourly SET last_seen = last_seen - 1
        WHERE old.last_seen_at IS NOT NULL
        AND hour = coalesce(strftime('%Y-%m-%d %H:00:00', old.last_seen_at), '');
END;

CREATE TRIGGER stats_user_registered_moved AFTER UPDATE OF created_at ON users
WHEN coalesce(strftime('%Y-%m-%d %H:00:00', old.created_at), '')
    IS NOT coalesce(strftime('%Y-%m-%d %H:00:00', new.created_at), '')
BEGIN
    UPDATE stats_users_hourly SET registered = registered - 1
        WHERE hour = coalesce(strftime('%Y-%m-%d %H:00:00', old.created_at), '');
    INSERT INTO stats_users_hourly (hour, registered)
        VALUES (coalesce(strftime('%Y-%m-%d %H:00:00', new.created_at), ''), 1)
        ON CONFLICT (hour) DO UPDATE SET registered = registered + 1;
END;

-- Skipped while the user stays in the same hour: the bot writes last_seen_at at most every few
-- minutes, so most of its writes change no count.
CREATE TRIGGER stats_user_seen AFTER UPDATE OF last_seen_at ON users
WHEN CASE WHEN old.last_seen_at IS NOT NULL
        THEN coalesce(strftime('%Y-%m-%d %H:00:00', old.last_seen_at), '') END
    IS NOT CASE WHEN new.last_seen_at IS NOT NULL
        THEN coalesce(strftime('%Y-%m-%d %H:00:00', new.last_seen_at), '') END
BEGIN
    UPDATE stats_users_hourly SET last_seen = last_seen - 1
        WHERE old.last_seen_at IS NOT NULL
        AND hour = coalesce(strftime('%Y-%m-%d %H:00:00', old.last_seen_at), '');
    INSERT INTO stats_users_hourly (hour, last_seen)
        SELECT coalesce(strftime('%Y-%m-%d %H:00:00', new.last_seen_at), ''), 1
        WHERE new.last_seen_at IS NOT NULL
        ON CONFLICT (hour) DO UPDATE SET last_seen = last_seen + 1;
END;

CREATE TRIGGER stats_command_logged AFTER INSERT ON command_log BEGIN
    INSERT INTO stats_commands_hourly (hour, command, uses)
        SELECT h.hour, CASE
                WHEN EXISTS (SELECT 1 FROM stats_commands_hourly AS s
                        WHERE s.hour = h.hour AND s.command = new.command)
                    OR (SELECT count(*) FROM stats_commands_hourly AS s
                        WHERE s.hour = h.hour) < 100
                THEN new.command ELSE '' END, 1
        FROM (SELECT coalesce(strftime('%Y-%m-%d %H:00:00', new.used_at), '') AS hour) AS h
        WHERE true
        ON CONFLICT (hour, command) DO UPDATE SET uses = uses + 1;
END;

-- A use is taken off where it was counted: under its own name, or under '' when its hour was
-- full. Rows older than the hours kept (the bot's retention) find no row and change nothing.
CREATE TRIGGER stats_command_unlogged AFTER DELETE ON command_log BEGIN
    UPDATE stats_commands_hourly SET uses = uses - 1
        WHERE hour = coalesce(strftime('%Y-%m-%d %H:00:00', old.used_at), '')
        AND command = CASE
            WHEN EXISTS (SELECT 1 FROM stats_commands_hourly AS s
                WHERE s.hour = coalesce(strftime('%Y-%m-%d %H:00:00', old.used_at), '')
                AND s.command = old.command)
            THEN old.command ELSE '' END;
END;

CREATE TRIGGER stats_command_changed AFTER UPDATE OF command, used_at ON command_log
WHEN old.command IS NOT new.command OR old.used_at IS NOT new.used_at
BEGIN
    UPDATE stats_commands_hourly SET uses = uses - 1
        WHERE hour = coalesce(strftime('%Y-%m-%d %H:00:00', old.used_at), '')
        AND command = CASE
            WHEN EXISTS (SELECT 1 FROM stats_commands_hourly AS s
                WHERE s.hour = coalesce(strftime('%Y-%m-%d %H:00:00', old.used_at), '')
                AND s.command = old.command)
            THEN old.command ELSE '' END;
    INSERT INTO stats_commands_hourly (hour, command, uses)
        SELECT h.hour, CASE
                WHEN EXISTS (SELECT 1 FROM stats_commands_hourly AS s
                        WHERE s.hour = h.hour AND s.command = new.command)
                    OR (SELECT count(*) FROM stats_commands_hourly AS s
                        WHERE s.hour = h.hour) < 100
                THEN new.command ELSE '' END, 1
        FROM (SELECT coalesce(strftime('%Y-%m-%d %H:00:00', new.used_at), '') AS hour) AS h
        WHERE true
        ON CONFLICT (hour, command) DO UPDATE SET uses = uses + 1;
END;
