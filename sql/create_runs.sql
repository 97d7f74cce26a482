-- The runs table: one row per run, written 'running' at the start and completed at the end,
-- so a run that was killed stays visible as one that never finished. No deletion vectors:
-- as for the captions table, readers without them (delta-rs: polars, DuckDB) can read it.
-- Auto compaction: two small writes a run, so the file count stays low over thousands of runs.
CREATE TABLE IF NOT EXISTS IDENTIFIER(:runs_table) (
  run_id STRING NOT NULL,
  started_at TIMESTAMP,
  ended_at TIMESTAMP,
  status STRING COMMENT 'running, succeeded, interrupted or failed',
  mode STRING COMMENT 'udf or sql',
  endpoint STRING,
  prompt_id STRING,
  listed BIGINT COMMENT 'files listed under the input',
  skipped BIGINT COMMENT 'already done for this endpoint and prompt',
  ok BIGINT,
  invalid BIGINT,
  failed BIGINT,
  requests BIGINT COMMENT 'HTTP requests sent, retries included',
  retries BIGINT,
  lost_task_requests BIGINT COMMENT 'at most this many more, sent by Spark tasks lost with their executor and retried (executor caller)',
  prompt_tokens BIGINT,
  completion_tokens BIGINT,
  total_tokens BIGINT,
  images_per_s DOUBLE COMMENT 'rows written per second of processing',
  latency_p50_ms DOUBLE,
  latency_p95_ms DOUBLE,
  waited_itpm_s DOUBLE COMMENT 'seconds requests were held back to stay under max_itpm',
  waited_otpm_s DOUBLE COMMENT 'seconds requests were held back to stay under max_otpm',
  waited_qph_s DOUBLE COMMENT 'seconds requests were held back to stay under max_qph',
  outage_s DOUBLE COMMENT 'seconds the endpoint failed every request and the run waited it out',
  put_off BIGINT COMMENT 'files whose requests were put off (refused credentials, an outage) and asked again',
  cut_off BIGINT COMMENT 'answers cut off at max_tokens (failed rows with error_class cut_off)',
  exit_code INT COMMENT 'exit code of the command: 0 done, 3 over max_failed_share, 1 failed, 130/143 interrupted; NULL while running',
  error_message STRING COMMENT 'why the run failed, one line',
  config_json STRING COMMENT 'effective configuration, without secrets'
) USING DELTA
TBLPROPERTIES ('delta.enableDeletionVectors' = 'false', 'delta.autoOptimize.autoCompact' = 'true',
               'vision_batch.schema_version' = '1')
