-- Forget the rows of runs that are long gone (the view :gone holds their run_id): their
-- claims decide nothing any more. Under Delta's default WriteSerializable isolation, other
-- runs' blind appends do not conflict with this.
MERGE INTO IDENTIFIER(:claims_table) AS c
USING IDENTIFIER(:gone) AS g
ON c.run_id = g.run_id
WHEN MATCHED THEN DELETE
