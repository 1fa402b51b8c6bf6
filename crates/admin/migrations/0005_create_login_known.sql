-- Addresses each account logged in from (`seen_at`, Unix seconds): once an account's budget is
-- spent, only these are still let try (functions/login/src/throttle.rs).
CREATE TABLE IF NOT EXISTS login_known (
    email VARCHAR(255) NOT NULL,
    address VARCHAR(64) NOT NULL,
    seen_at BIGINT NOT NULL,
    PRIMARY KEY (email, address)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
