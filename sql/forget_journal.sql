-- Drop journal rows that the tables now hold (the view :done: a run_id and the last batch of
-- that run whose rows are written). Under Delta's default WriteSerializable isolation, other
-- runs' blind appends do not conflict with this.
MERGE INTO IDENTIFIER(:journal_table) AS j
USING IDENTIFIER(:done) AS d
ON j.run_id = d.run_id AND j.batch <= d.batch
WHEN MATCHED THEN DELETE
