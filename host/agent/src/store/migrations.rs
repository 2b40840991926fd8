//! The database stores' schemas: versioned migrations embedded in the binary and run by sqlx's
//! migrator at open. sqlx's `migrate!` macro embeds them the same way at compile time, but it
//! builds a second copy of sqlx, both drivers and the TLS stack for the proc-macro — the
//! largest duplicate in the workspace's build — so the list is written out here instead.
//! Checksums are sqlx's own (over the SQL text), so a database migrated by either way is the
//! same to the other.

use sqlx::error::BoxDynError;
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};
use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;

/// One migration: its version and description (as sqlx reads them off `<version>_<name>.sql`)
/// and its SQL.
type Step = (i64, &'static str, &'static str);

/// A store's migrations, oldest first.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Embedded(&'static [Step]);

pub(crate) const SQLITE: Embedded = Embedded(&[
    (
        1,
        "state",
        include_str!("../../migrations/sqlite/0001_state.sql"),
    ),
    (
        2,
        "recent",
        include_str!("../../migrations/sqlite/0002_recent.sql"),
    ),
    (
        3,
        "retention",
        include_str!("../../migrations/sqlite/0003_retention.sql"),
    ),
    (
        4,
        "sync marks",
        include_str!("../../migrations/sqlite/0004_sync_marks.sql"),
    ),
]);

pub(crate) const POSTGRES: Embedded = Embedded(&[
    (
        1,
        "state",
        include_str!("../../migrations/postgres/0001_state.sql"),
    ),
    (
        2,
        "audit",
        include_str!("../../migrations/postgres/0002_audit.sql"),
    ),
    (
        3,
        "standby",
        include_str!("../../migrations/postgres/0003_standby.sql"),
    ),
]);

impl Embedded {
    fn migrations(self) -> Vec<Migration> {
        self.0
            .iter()
            .map(|(version, description, sql)| {
                Migration::new(
                    *version,
                    Cow::Borrowed(*description),
                    MigrationType::Simple,
                    Cow::Borrowed(*sql),
                    false,
                )
            })
            .collect()
    }

    /// The migrator that brings a database to this schema.
    pub(crate) async fn migrator(self) -> Result<Migrator, sqlx::migrate::MigrateError> {
        Migrator::new(self).await
    }
}

impl MigrationSource<'static> for Embedded {
    fn resolve(
        self,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<Migration>, BoxDynError>> + Send + 'static>> {
        Box::pin(async move { Ok(self.migrations()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file in a store's migrations folder is in its list, under the version and name
    /// sqlx gives it, with its very text: a migration added to the folder and not here (or
    /// changed in one place only) fails here, not on a database.
    #[test]
    fn the_lists_are_the_migration_folders() {
        for (folder, embedded) in [("sqlite", SQLITE), ("postgres", POSTGRES)] {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("migrations")
                .join(folder);
            let mut files: Vec<(i64, String, String)> = std::fs::read_dir(&dir)
                .expect("migrations folder")
                .map(|entry| {
                    let path = entry.expect("entry").path();
                    let name = path
                        .file_stem()
                        .and_then(|n| n.to_str())
                        .expect("a file name")
                        .to_owned();
                    let (version, description) = name.split_once('_').expect("<version>_<name>");
                    (
                        version.parse().expect("a version"),
                        description.replace('_', " "),
                        std::fs::read_to_string(&path).expect("sql"),
                    )
                })
                .collect();
            files.sort();
            let listed: Vec<(i64, String, String)> = embedded
                .0
                .iter()
                .map(|(v, d, s)| (*v, (*d).to_owned(), (*s).to_owned()))
                .collect();
            assert_eq!(listed, files, "{folder}");
        }
    }
}
