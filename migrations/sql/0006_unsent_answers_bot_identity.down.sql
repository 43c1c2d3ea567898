-- Back to revision 5: answers still unsent are dropped with their table (revision 5's bot has
-- no way to send them), and the database no longer names the bot it serves.
DROP TABLE bot_identity;
DROP TABLE unsent_answers;
