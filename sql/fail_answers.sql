-- Fail the answers one run wrote `ok` that the check after the caption template found unusable
-- (the view :checked holds path, prompt_id, error_class, error_message): on the SQL path,
-- structured answers that break the response schema or are no JSON (pipeline/runs/sql.py).
-- The run id selects the rows and each keeps its prompt id, so the SQL job's check needs none.
-- The answer is cleared as the UDF path clears a failed one; its estimated tokens stay (it
-- was paid for).
MERGE INTO IDENTIFIER(:table) AS t
USING IDENTIFIER(:checked) AS s
ON t.path = s.path AND t.endpoint = :endpoint AND t.prompt_id = s.prompt_id
  AND t.run_id = :run_id AND t.status = 'ok'
WHEN MATCHED THEN UPDATE SET
  status = 'failed',
  error_class = s.error_class,
  error_message = s.error_message,
  caption = NULL,
  response_json = NULL
