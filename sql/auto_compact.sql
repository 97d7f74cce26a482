-- Give a table made by an older version of vision-batch the auto compaction its DDL in sql/
-- now sets (pipeline/tables/sink.py, UPKEEP): a write that leaves many small files is
-- followed by their compaction.
ALTER TABLE IDENTIFIER(:table) SET TBLPROPERTIES ('delta.autoOptimize.autoCompact' = 'true')
