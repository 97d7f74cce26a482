-- Merge one batch (the view :batch) into the captions table, keyed by (path, endpoint,
-- prompt_id). Replaying a batch rewrites the same values; an answer already paid for ('ok'
-- for the same bytes) is never replaced by a worse outcome from a concurrent or later run.
-- :first_path and :last_path are the batch's least and greatest path: every row it can match
-- is in that range, so Delta reads only the files whose path statistics overlap it.
MERGE INTO IDENTIFIER(:table) AS t
USING IDENTIFIER(:batch) AS s
ON t.path = s.path AND t.endpoint = s.endpoint AND t.prompt_id = s.prompt_id
  AND t.path BETWEEN :first_path AND :last_path
WHEN MATCHED AND NOT (
  t.status = 'ok' AND s.status <> 'ok' AND t.content_sha256 <=> s.content_sha256
) THEN UPDATE SET *
WHEN NOT MATCHED THEN INSERT *
