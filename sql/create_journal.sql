-- The journal (<table>_journal): answers made durable the moment they arrive, before the batch
-- they belong to is MERGEd (pipeline/runs/journal.py). A run appends what it was answered
-- every few seconds (blind appends: no conflict with anyone), drops what its MERGEs have
-- written, and drops the rest as it ends. A run that dies leaves its rows here; the next run
-- folds them into the captions and groups tables (a MERGE keyed as theirs, so never a second
-- row for a file) before it plans, and so does not pay for those answers again.
CREATE TABLE IF NOT EXISTS IDENTIFIER(:journal_table) (
  run_id STRING NOT NULL COMMENT 'the run that was answered',
  batch INT NOT NULL COMMENT 'the batch of that run the answer belongs to',
  kind STRING NOT NULL COMMENT 'captions or groups: the table the row is for',
  row_json STRING NOT NULL COMMENT 'the row, as JSON, in the columns of that table',
  written_at TIMESTAMP
) USING DELTA
-- Not auto-compacted, unlike the other tables: its files live a minute (a run drops what its
-- MERGEs wrote every 60 s, and the rest as it ends), and compaction's check after each of
-- its appends, one a second, cost more than a second of Spark work on 2 cores each time.
TBLPROPERTIES ('delta.enableDeletionVectors' = 'false',
               -- Hundreds of small commits an hour: keep a day of log, not thirty.
               'delta.logRetentionDuration' = 'interval 1 days',
               'vision_batch.schema_version' = '1')
