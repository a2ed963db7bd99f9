-- One row per prediction request, written by the prediction log.
CREATE TABLE predictions (
    request_id    uuid PRIMARY KEY,
    model         text NOT NULL,
    model_version text NOT NULL,
    input_sha256  text NOT NULL,
    status        text NOT NULL,
    http_status   integer NOT NULL,
    error         text,
    queue_ms      double precision,
    inference_ms  double precision,
    total_ms      double precision NOT NULL,
    batch_size    integer,
    replica       integer,
    cache_level   text,
    created_at    timestamptz NOT NULL
);

CREATE INDEX predictions_model_created_at_idx ON predictions (model, created_at);
