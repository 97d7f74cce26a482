-- The captions table: one row per (path, endpoint, prompt_id). Shared by the UDF path and
-- the SQL path. :table is bound through IDENTIFIER, never formatted into the text.
-- vision_batch.schema_version marks a table this program made. A table with neither the mark
-- nor the key columns of its kind is refused and left as it is (pipeline/tables/sink.py).
-- Frequent small MERGEs: optimized writes and auto compaction keep the file count down.
-- Deletion vectors stay off: open-source Delta 4.0 cannot MERGE with them into a table that
-- has a column named `path` (AMBIGUOUS_REFERENCE filePath), and `path` is in the contract.
CREATE TABLE IF NOT EXISTS IDENTIFIER(:table) (
  path STRING NOT NULL COMMENT 'the file as Spark lists it',
  content_sha256 STRING COMMENT 'hex SHA-256 of the file bytes; NULL when never read',
  size_bytes BIGINT COMMENT 'file length',
  modified_at TIMESTAMP COMMENT 'file modification time',
  format STRING COMMENT 'detected from the bytes (JPEG, PNG, ...); NULL if none',
  width INT COMMENT 'original pixels, after EXIF orientation',
  height INT COMMENT 'original pixels, after EXIF orientation',
  sent_width INT COMMENT 'pixels sent after preparation',
  sent_height INT COMMENT 'pixels sent after preparation',
  sent_bytes INT COMMENT 'image bytes sent after preparation',
  endpoint STRING NOT NULL COMMENT 'serving endpoint name',
  prompt_id STRING NOT NULL COMMENT 'hash of prompt text, model parameters and response schema',
  status STRING NOT NULL COMMENT 'ok, invalid (never sent) or failed (sent, no usable answer)',
  error_class STRING COMMENT 'why not ok; NULL when ok',
  error_message STRING COMMENT 'one human sentence',
  caption STRING COMMENT 'the model text answer',
  response_json STRING COMMENT 'structured answer when a response schema is used',
  prompt_tokens INT,
  completion_tokens INT,
  total_tokens INT,
  usage_source STRING COMMENT 'endpoint (from the response), apportioned (the usage of a packed request, shared over its images) or estimated',
  estimated_image_tokens INT COMMENT 'the model family formula applied to what was sent',
  attempts INT COMMENT 'requests made for this row',
  latency_ms INT COMMENT 'of the successful (or last) attempt',
  run_id STRING COMMENT 'the run that wrote this row',
  processed_at TIMESTAMP,
  reused_from STRING COMMENT 'path whose answer (same bytes) this row took without a request',
  request_share DOUBLE COMMENT 'requests this row accounts for: each counts 1, shared equally by the images sent in it',
  group_key STRING COMMENT 'the group this file belongs to (--group-by); its answer is in <table>_groups',
  finish_reason STRING COMMENT 'how the answer ended (stop, length, content_filter...); NULL when none came or the endpoint did not say'
) USING DELTA
TBLPROPERTIES (
  'delta.enableDeletionVectors' = 'false',
  'delta.autoOptimize.optimizeWrite' = 'true',
  'delta.autoOptimize.autoCompact' = 'true',
  'vision_batch.schema_version' = '1'
)
