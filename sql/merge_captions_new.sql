-- Insert one batch whose files had no row for this endpoint and prompt when the run was
-- planned (the view :batch): Delta's insert-only MERGE, which rewrites no file. A file some
-- other run wrote since is left as it is here; the caller sees it in the statement's
-- num_inserted_rows and merges the batch again with sql/merge_captions.sql.
MERGE INTO IDENTIFIER(:table) AS t
USING IDENTIFIER(:batch) AS s
ON t.path = s.path AND t.endpoint = s.endpoint AND t.prompt_id = s.prompt_id
WHEN NOT MATCHED THEN INSERT *
