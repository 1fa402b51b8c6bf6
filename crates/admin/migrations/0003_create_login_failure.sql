-- Failed logins per email, for the login lockout: `failures` counts failures since
-- `window_start` (Unix seconds); a success deletes the row. Emails that do not exist are counted
-- too, so the lockout tells nothing about which accounts exist.
CREATE TABLE login_failure (
    email VARCHAR(255) NOT NULL PRIMARY KEY,
    failures INT NOT NULL,
    window_start BIGINT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
