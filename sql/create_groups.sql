-- The groups table (<table>_groups): one answer per group of files that belong together
-- (--group-by), keyed by (group_key, endpoint, prompt_id). Each member file also has its row
-- in the captions table, with its own status and this group_key. A MERGE a batch, as for the
-- captions table: auto compaction keeps the file count down.
CREATE TABLE IF NOT EXISTS IDENTIFIER(:groups_table) (
  group_key STRING NOT NULL COMMENT 'the folder, or the first capture group of --group-by',
  endpoint STRING NOT NULL COMMENT 'serving endpoint name',
  prompt_id STRING NOT NULL COMMENT 'hash of group prompt, model parameters, schema, rule',
  fingerprint STRING COMMENT 'SHA-256 of the members (path, size, mtime): a change redoes it',
  member_paths ARRAY<STRING> COMMENT 'every file of the group, sent or not, by path',
  images INT COMMENT 'members sent (the valid ones)',
  parts INT COMMENT 'requests the group was split into (model limits); 1 when it fit',
  status STRING NOT NULL COMMENT 'ok, invalid (no valid member: no request) or failed',
  error_class STRING COMMENT 'why not ok: a failed class, or no_valid_image',
  error_message STRING COMMENT 'one human sentence',
  answer STRING COMMENT 'the model answer; parts are labelled and joined when split',
  part_answers ARRAY<STRING> COMMENT 'the answer of each part, in order',
  response_json STRING COMMENT 'structured answer when a response schema is used (one part)',
  prompt_tokens INT,
  completion_tokens INT,
  total_tokens INT,
  usage_source STRING COMMENT 'endpoint or estimated',
  attempts INT COMMENT 'requests made for the group, over all parts',
  latency_ms INT COMMENT 'slowest part',
  run_id STRING COMMENT 'the run that wrote this row',
  processed_at TIMESTAMP
) USING DELTA
TBLPROPERTIES ('delta.enableDeletionVectors' = 'false', 'delta.autoOptimize.autoCompact' = 'true',
               'vision_batch.schema_version' = '1')
