-- The per-email lockout counts, replaced by login_throttle (0004).
DROP TABLE IF EXISTS login_failure;
