-- Journal answers (the view :rows). A blind append: it reads nothing of the table, so it never
-- conflicts with another run's appends or with a fold.
INSERT INTO IDENTIFIER(:journal_table) SELECT * FROM IDENTIFIER(:rows)
