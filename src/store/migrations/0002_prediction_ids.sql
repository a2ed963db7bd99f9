-- Every answered prediction keeps its own row, even when clients reuse their
-- request ids: the key becomes an id the server makes for each prediction
-- (`prediction_id`), and the request id becomes a plain, indexed column.
--
-- Rows written before this migration keep their key, renamed: it was the
-- request id itself when that was a UUID, else a name-based (v5) UUID of it.
-- Their `request_id` is unknown (NULL).
ALTER TABLE predictions RENAME COLUMN request_id TO prediction_id;
ALTER TABLE predictions ADD COLUMN request_id text;
-- True when the client chose the request id (`x-request-id`), false when the
-- server made it; a client-chosen id is looked up with the admin token only.
ALTER TABLE predictions ADD COLUMN request_id_from_client boolean NOT NULL DEFAULT false;
ALTER TABLE predictions ALTER COLUMN request_id_from_client DROP DEFAULT;
CREATE INDEX predictions_request_id_idx ON predictions (request_id);
