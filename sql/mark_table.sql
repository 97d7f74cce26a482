-- Mark a table made by a version of vision-batch from before the mark existed (it has the key
-- columns of its kind), as the CREATE statements in sql/ mark the tables they make.
ALTER TABLE IDENTIFIER(:table) SET TBLPROPERTIES ('vision_batch.schema_version' = '1')
