-- Each user's token generation: tokens carry the generation they were issued in (claim `gen`),
-- and validate refuses older ones. Logging out and a new password (`mp3-admin user add`) move it
-- on, which revokes every token issued before.
ALTER TABLE user ADD COLUMN token_generation INT NOT NULL DEFAULT 0;
