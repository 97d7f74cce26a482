-- Merge one batch of group answers (the view :groups) into the groups table, keyed by
-- (group_key, endpoint, prompt_id). As for files: an answer already paid for ('ok' for the
-- same members) is never replaced by a worse outcome. Only the files whose group keys overlap
-- the batch's (:first_key to :last_key) are read.
MERGE INTO IDENTIFIER(:groups_table) AS t
USING IDENTIFIER(:groups) AS s
ON t.group_key = s.group_key AND t.endpoint = s.endpoint AND t.prompt_id = s.prompt_id
  AND t.group_key BETWEEN :first_key AND :last_key
WHEN MATCHED AND NOT (
  t.status = 'ok' AND s.status <> 'ok' AND t.fingerprint <=> s.fingerprint
) THEN UPDATE SET *
WHEN NOT MATCHED THEN INSERT *
