-- Give a claims table made by an older version of vision-batch the log retention
-- sql/create_claims.sql now sets (pipeline/tables/sink.py, UPKEEP).
ALTER TABLE IDENTIFIER(:table) SET TBLPROPERTIES ('delta.logRetentionDuration' = 'interval 2 days')
