create table "users"(
  "id"          integer   primary key   not null,
  telegram_id   int       not null   unique,
  [username]    varchar ( 64 ),
  `first_name`  nvarchar(128),
  last_name     text,
  is_admin      int       not null   default (0) check (is_admin in (0, 1)),
  created_at    timestamp not null   default current_timestamp,
  language_code character(16),
  last_seen_at  date
);
CREATE TABLE Command_Log (
   ID INTEGER PRIMARY KEY,
   USER_ID BIGINT NOT NULL,
   COMMAND TEXT NOT NULL,
   USED_AT DATETIME DEFAULT CURRENT_TIMESTAMP NOT NULL,
   FOREIGN KEY (USER_ID) REFERENCES USERS (ID) ON DELETE CASCADE
);
CREATE INDEX IX_COMMAND_LOG_USER_ID ON Command_Log (USER_ID);
create index "ix_command_log_used_at" on "command_log"("used_at");
create index ix_users_last_seen_at on users (last_seen_at);
create table "handled_updates" (
  update_id  integer primary key,
  handled_at timestamp not null default (current_timestamp)
);
create index "ix_handled_updates_handled_at" on handled_updates ("handled_at");
CREATE TABLE Stats_Users_Hourly (
   HOUR VARCHAR(19) PRIMARY KEY,
   REGISTERED BIGINT DEFAULT 0 NOT NULL,
   LAST_SEEN BIGINT DEFAULT 0 NOT NULL
) WITHOUT ROWID;
create table stats_commands_hourly (
  [hour]    text not null,
  [command] varchar(32) not null,
  [uses]    int not null default (0),
  constraint pk_stats_commands_hourly primary key ([hour], [command])
) without rowid;
create trigger stats_user_added after insert on "users" begin
  insert into stats_users_hourly (hour, registered)
    values (coalesce(strftime('%Y-%m-%d %H:00:00', new.created_at), ''), 1)
    on conflict (hour) do update set registered = registered + 1;
  insert into stats_users_hourly (hour, last_seen)
    select coalesce(strftime('%Y-%m-%d %H:00:00', new.last_seen_at), ''), 1
    where new.last_seen_at is not null
    on conflict (hour) do update set last_seen = last_seen + 1;
end;
create trigger stats_user_removed after delete on "users" begin
  update stats_users_hourly set registered = registered - 1
    where hour = coalesce(strftime('%Y-%m-%d %H:00:00', old.created_at), '');
  update stats_users_hourly set last_seen = last_seen - 1
    where old.last_seen_at is not null
    and hour = coalesce(strftime('%Y-%m-%d %H:00:00', old.last_seen_at), '');
end;
create trigger stats_user_registered_moved after update of created_at on "users"
when coalesce(strftime('%Y-%m-%d %H:00:00', old.created_at), '')
  is not coalesce(strftime('%Y-%m-%d %H:00:00', new.created_at), '')
begin
  update stats_users_hourly set registered = registered - 1
    where hour = coalesce(strftime('%Y-%m-%d %H:00:00', old.created_at), '');
  insert into stats_users_hourly (hour, registered)
    values (coalesce(strftime('%Y-%m-%d %H:00:00', new.created_at), ''), 1)
    on conflict (hour) do update set registered = registered + 1;
end;
-- last-seen moves between hours
create trigger stats_user_seen after update of last_seen_at on "users"
when case when old.last_seen_at is not null
    then coalesce(strftime('%Y-%m-%d %H:00:00', old.last_seen_at), '') end
  is not case when new.last_seen_at is not null
    then coalesce(strftime('%Y-%m-%d %H:00:00', new.last_seen_at), '') end
begin
  update stats_users_hourly set last_seen = last_seen - 1
    where old.last_seen_at is not null
    and hour = coalesce(strftime('%Y-%m-%d %H:00:00', old.last_seen_at), '');
  insert into stats_users_hourly (hour, last_seen)
    select coalesce(strftime('%Y-%m-%d %H:00:00', new.last_seen_at), ''), 1
    where new.last_seen_at is not null
    on conflict (hour) do update set last_seen = last_seen + 1;
end;
create trigger stats_command_logged after insert on command_log begin
  insert into stats_commands_hourly (hour, command, uses)
    select h.hour, case
        when exists (select 1 from stats_commands_hourly as s
            where s.hour = h.hour and s.command = new.command)
          or (select count(*) from stats_commands_hourly as s
            where s.hour = h.hour) < 100
        then new.command else '' end, 1
    from (select coalesce(strftime('%Y-%m-%d %H:00:00', new.used_at), '') as hour) as h
    where true
    on conflict (hour, command) do update set uses = uses + 1;
end;
create trigger stats_command_unlogged after delete on command_log begin
  update stats_commands_hourly set uses = uses - 1
    where hour = coalesce(strftime('%Y-%m-%d %H:00:00', old.used_at), '')
    and command = case
      when exists (select 1 from stats_commands_hourly as s
        where s.hour = coalesce(strftime('%Y-%m-%d %H:00:00', old.used_at), '')
        and s.command = old.command)
      then old.command else '' end;
end;
create trigger stats_command_changed after update of command, used_at on command_log
when old.command is not new.command or old.used_at is not new.used_at
begin
  update stats_commands_hourly set uses = uses - 1
    where hour = coalesce(strftime('%Y-%m-%d %H:00:00', old.used_at), '')
    and command = case
      when exists (select 1 from stats_commands_hourly as s
        where s.hour = coalesce(strftime('%Y-%m-%d %H:00:00', old.used_at), '')
        and s.command = old.command)
      then old.command else '' end;
  insert into stats_commands_hourly (hour, command, uses)
    select h.hour, case
        when exists (select 1 from stats_commands_hourly as s
            where s.hour = h.hour and s.command = new.command)
          or (select count(*) from stats_commands_hourly as s
            where s.hour = h.hour) < 100
        then new.command else '' end, 1
    from (select coalesce(strftime('%Y-%m-%d %H:00:00', new.used_at), '') as hour) as h
    where true
    on conflict (hour, command) do update set uses = uses + 1;
end;
CREATE TABLE [Unsent_Answers] (
   Update_Id INTEGER PRIMARY KEY NOT NULL,
   Chat_Id BIGINT NOT NULL,
   Text CLOB NOT NULL,
   Saved_At TIMESTAMP DEFAULT (CURRENT_TIMESTAMP) NOT NULL
);
create table bot_identity (
  only_row  integer  primary key  check (only_row = 1),
  bot_id    bigint   not null,
  username  varchar(64) not null,
  since     timestamp not null default current_timestamp
);
CREATE TABLE "pending_updates" (
  "update_id" INTEGER NOT NULL PRIMARY KEY,
  "body" TEXT NOT NULL,
  "saved_at" DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP
);
