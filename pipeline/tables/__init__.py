"""Write: the Delta tables a run fills (captions, runs, groups, claims), made from the DDL in
sql/ and written batch by batch with MERGE, so a rerun resumes and never duplicates a row."""
