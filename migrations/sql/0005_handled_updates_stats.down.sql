-- Back to revision 4: no update ids, no /stats summaries (revision 4's bot counts from the
-- tables themselves).
DROP TRIGGER stats_command_changed;
DROP TRIGGER stats_command_unlogged;
DROP TRIGGER stats_command_logged;
DROP TRIGGER stats_user_seen;
DROP TRIGGER stats_user_registered_moved;
DROP TRIGGER stats_user_removed;
DROP TRIGGER stats_user_added;
DROP TABLE stats_commands_hourly;
DROP TABLE stats_users_hourly;
DROP TABLE handled_updates;
