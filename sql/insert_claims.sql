-- Add a run's claims and its lease (the view :claims). A blind append: it reads nothing of the
-- table, so it never conflicts with another run's claims or with a cleanup.
-- One file a write (COALESCE): the rows are few, and each file is one more for every read.
INSERT INTO IDENTIFIER(:claims_table) SELECT /*+ COALESCE(1) */ * FROM IDENTIFIER(:claims)
