# Sourced by the MySQL image's entrypoint on the first start, after it has run the migration
# files (0001_*.sql, ...) in order in the `auth` database: record them in schema_migrations the
# way `mp3-admin migrate` does (crates/admin/src/migrate.rs), so that a later
# `mp3-admin migrate` applies only the files added since.
mp3_versions=""
for mp3_file in /docker-entrypoint-initdb.d/[0-9][0-9][0-9][0-9]_*.sql; do
    mp3_name=${mp3_file##*/}
    mp3_versions="$mp3_versions($((10#${mp3_name%%_*}))),"
done
docker_process_sql <<SQL
CREATE TABLE IF NOT EXISTS schema_migrations (
            version INT UNSIGNED NOT NULL PRIMARY KEY,
            applied_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
        ) ENGINE=InnoDB;
INSERT INTO schema_migrations (version) VALUES ${mp3_versions%,};
SQL
unset mp3_versions mp3_file mp3_name
