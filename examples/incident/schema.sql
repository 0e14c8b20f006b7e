-- schema.sql - the reports table as it is in production today: before the
-- migration that adds the summary column (migrate.sql) has run.
CREATE TABLE reports (
    id  INTEGER PRIMARY KEY,
    day TEXT NOT NULL
);
