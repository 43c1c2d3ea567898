-- Back to revision 5: answers still unsent and updates still pending are dropped with their
-- tables (revision 5's bot has no way to use them), and the database no longer names the bot
-- it serves.
DROP TABLE bot_identity;
DROP TABLE pending_updates;
DROP TABLE unsent_answers;
