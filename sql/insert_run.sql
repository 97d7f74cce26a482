-- Add one run's row (the view :run) to the runs table: a run_id no row has yet, so a plain
-- append, which never conflicts with another run's writes.
INSERT INTO IDENTIFIER(:runs_table) SELECT * FROM IDENTIFIER(:run)
