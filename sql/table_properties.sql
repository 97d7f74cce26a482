-- A table's properties: before writing to an existing table, vision-batch looks for the mark
-- its CREATE statements set (vision_batch.schema_version).
SHOW TBLPROPERTIES IDENTIFIER(:table)
