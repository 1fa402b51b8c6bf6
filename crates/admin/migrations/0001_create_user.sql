-- The seed system's user table. IF NOT EXISTS so that an existing seed database is adopted.
-- `password` holds an argon2id PHC string (about 100 characters), never plaintext.
CREATE TABLE IF NOT EXISTS user (
    id INT AUTO_INCREMENT PRIMARY KEY,
    email VARCHAR(255) NOT NULL UNIQUE,
    password VARCHAR(255) NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
