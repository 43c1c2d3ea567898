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
