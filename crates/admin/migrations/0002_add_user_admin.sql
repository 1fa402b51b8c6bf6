-- Administrators (the `admin` JWT claim). Plain ADD COLUMN: MySQL 8 has no IF NOT EXISTS here,
-- and schema_migrations makes sure this runs once.
ALTER TABLE user ADD COLUMN admin BOOLEAN NOT NULL DEFAULT FALSE;
