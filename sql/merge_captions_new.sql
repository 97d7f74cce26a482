-- Insert one batch whose files had no row for this endpoint and prompt when the run was
-- planned (the view :batch): Delta's insert-only MERGE, which rewrites no file. A file some
-- other run wrote since is left as it is here; the caller sees it in the statement's
-- num_inserted_rows and merges the batch again with sql/merge_captions.sql. As there, only
-- the files whose paths overlap the batch's (:first_path to :last_path) are read.
MERGE INTO IDENTIFIER(:table) AS t
USING IDENTIFIER(:batch) AS s
ON t.path = s.path AND t.endpoint = s.endpoint AND t.prompt_id = s.prompt_id
  AND t.path BETWEEN :first_path AND :last_path
WHEN NOT MATCHED THEN INSERT *
