-- The claims table (<table>_claims): which run is asking which units, so that overlapping
-- runs on one table share the work (pipeline/runs/claims.py). Append-only: every write is a
-- blind append, which never conflicts with another run's. Row tracking numbers each row with
-- the version that committed it (_metadata.row_commit_version): the first claim of a unit
-- is the one with the lowest. No deletion vectors, as for the other tables: delta-rs reads it.
-- A write every lease/3 s while a run is alive: auto compaction keeps the file count (what each
-- read of the claims opens) down, and log files older than two days are dropped at the next
-- checkpoint (rows of runs gone a day are forgotten; nobody travels back in this table).
CREATE TABLE IF NOT EXISTS IDENTIFIER(:claims_table) (
  endpoint STRING NOT NULL,
  prompt_id STRING NOT NULL,
  unit STRING COMMENT 'a file path, or group:<key> for a whole group; NULL on a lease row',
  run_id STRING NOT NULL,
  expires_at TIMESTAMP COMMENT 'lease rows: the run is alive until then (its last one counts)'
) USING DELTA
TBLPROPERTIES ('delta.enableRowTracking' = 'true', 'delta.enableDeletionVectors' = 'false',
               'delta.autoOptimize.autoCompact' = 'true',
               'delta.logRetentionDuration' = 'interval 2 days',
               'vision_batch.schema_version' = '1')
