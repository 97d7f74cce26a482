-- Add a run's claims and its lease (the view :claims). A blind append: it reads nothing of the
-- table, so it never conflicts with another run's claims or with a cleanup.
INSERT INTO IDENTIFIER(:claims_table) SELECT * FROM IDENTIFIER(:claims)
