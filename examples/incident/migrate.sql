-- migrate.sql - the migration the new job code needs: it must run before
-- that code ships. preflight.sh checks that it has.
ALTER TABLE reports ADD COLUMN summary TEXT;
