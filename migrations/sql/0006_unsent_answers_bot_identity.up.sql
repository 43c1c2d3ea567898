-- Revision 6: answers a stopping bot could not send in time, updates Telegram was told to
-- forget before they were answered, and the bot a database serves.
--
-- unsent_answers: on SIGTERM the bot lets the chats finish for its grace period; a chat still
-- waiting out a 429 then (Telegram may ask for 30 s) has its answer ready and not sent, while
-- what the update changed is committed with its id, so the next start passes the update over
-- and the user would get nothing. The stopping bot writes such answers here, in one transaction
-- that also records their updates as handled; the next start sends them, then deletes each.
-- Rows are few (at most the messages in flight at a stop) and short-lived.
--
-- pending_updates: getUpdates gives at most 100 updates from its offset, and an offset tells
-- Telegram to forget every update below it. While fewer than 90 updates wait, the offset stays
-- below the lowest one being answered (a crash or a stop leaves them to Telegram); past that,
-- it must move on or one waiting chat would hold up all the others. The updates it passes that
-- are not answered yet are written here first, in one transaction; a start answers those whose
-- ids are not in handled_updates, and rows of handled updates are deleted as the bot goes.
--
-- bot_identity: the Telegram bot whose updates `handled_updates` records. Each bot numbers its
-- updates on its own, so another bot's update 1 would be taken for this one's and passed over:
-- the bot refuses to start on a database that serves another bot (one row at most).
CREATE TABLE unsent_answers (
    update_id INTEGER PRIMARY KEY,
    chat_id INTEGER NOT NULL,
    text TEXT NOT NULL,
    saved_at DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP
);

CREATE TABLE pending_updates (
    update_id INTEGER PRIMARY KEY,
    body TEXT NOT NULL,
    saved_at DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP
);

CREATE TABLE bot_identity (
    only_row INTEGER PRIMARY KEY CHECK (only_row = 1),
    bot_id INTEGER NOT NULL,
    username TEXT NOT NULL,
    since DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP
);
