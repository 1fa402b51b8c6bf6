-- Each user's token generation: tokens carry the generation they were issued in (claim `gen`),
-- and validate refuses older ones. Logging out and a new password (`mp3-admin user add`) move it
-- on, which revokes every token issued before. `mp3-admin` starts a new user at the current
-- Unix time, so a user deleted and added again never takes back its old tokens.
-- (login_failure, which login no longer uses, stays until a later release: old login pods
-- still write to it while a rollout replaces them.)
ALTER TABLE user ADD COLUMN token_generation BIGINT NOT NULL DEFAULT 0;
