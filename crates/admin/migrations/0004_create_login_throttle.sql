-- Login budgets (functions/login/src/throttle.rs): `attempts` counts password checks charged
-- to `bucket` since `window_start` (Unix seconds). Buckets are `address <ip>`, `pair <ip>
-- <email>` and `account <email>`; the table's collation matches user.email's, so every spelling
-- an email lookup would match shares a counter. Replaces login_failure.
CREATE TABLE IF NOT EXISTS login_throttle (
    bucket VARCHAR(320) NOT NULL PRIMARY KEY,
    attempts INT NOT NULL,
    window_start BIGINT NOT NULL,
    KEY window_start (window_start)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
