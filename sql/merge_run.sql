-- Insert or complete one run's row (the view :run) in the runs table, keyed by run_id.
MERGE INTO IDENTIFIER(:runs_table) AS t
USING IDENTIFIER(:run) AS s
ON t.run_id = s.run_id
WHEN MATCHED THEN UPDATE SET *
WHEN NOT MATCHED THEN INSERT *
