-- Revision 1 written by hand, in another style: lower case, quoting of every kind, column
-- constraints instead of table constraints, other type names of the same affinity.
create table "users"(
  "id"          integer   primary key   not null,
  telegram_id   int       not null   unique,
  [username]    varchar ( 64 ),
  `first_name`  nvarchar(128),
  last_name     text,
  is_admin      boolean   not null   default (0),
  created_at    timestamp not null   default current_timestamp
);
