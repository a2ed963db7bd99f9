//! Versioned SQL migrations, embedded in the binary and applied when the
//! prediction log first connects. All of them run in one transaction that
//! holds a transaction-scoped advisory lock, so several Gantry instances
//! starting at once apply each migration exactly once; the versions applied
//! are recorded in `gantry_migrations`, which makes applying twice a no-op.

/// One migration: its version (its order) and its SQL.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every migration, in version order. Never edit one that has shipped: add
/// the next version instead.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "predictions",
        sql: include_str!("migrations/0001_predictions.sql"),
    },
    Migration {
        version: 2,
        name: "prediction_ids",
        sql: include_str!("migrations/0002_prediction_ids.sql"),
    },
];

/// Key of the advisory lock that serialises migrations ("gantrymg").
const LOCK_KEY: i64 = 0x6761_6e74_7279_6d67;

/// Applies the migrations `client`'s database lacks, in one transaction, and
/// answers the versions it applied (empty when it was up to date).
pub async fn apply(client: &mut tokio_postgres::Client) -> Result<Vec<i32>, tokio_postgres::Error> {
    let transaction = client.transaction().await?;
    transaction
        .execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
        .await?;
    transaction
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS gantry_migrations (
                 version    integer PRIMARY KEY,
                 applied_at timestamptz NOT NULL DEFAULT now()
             )",
        )
        .await?;
    let done: Vec<i32> = transaction
        .query("SELECT version FROM gantry_migrations", &[])
        .await?
        .iter()
        .map(|row| row.try_get(0))
        .collect::<Result<_, _>>()?;
    let mut applied = Vec::new();
    for migration in MIGRATIONS {
        if done.contains(&migration.version) {
            continue;
        }
        transaction.batch_execute(migration.sql).await?;
        transaction
            .execute(
                "INSERT INTO gantry_migrations (version, applied_at) VALUES ($1, now())",
                &[&migration.version],
            )
            .await?;
        tracing::info!(
            version = migration.version,
            name = migration.name,
            "applied database migration"
        );
        applied.push(migration.version);
    }
    transaction.commit().await?;
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::MIGRATIONS;

    #[test]
    fn versions_increase_from_one() {
        for (i, migration) in MIGRATIONS.iter().enumerate() {
            assert_eq!(migration.version, i as i32 + 1, "{}", migration.name);
            assert!(!migration.sql.trim().is_empty());
        }
    }
}
