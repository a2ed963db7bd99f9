//! A database of one test alone on the machine's PostgreSQL, created empty
//! and dropped when the guard is, so tests that migrate or count rows never
//! see (or change) another test's tables.

use tokio_postgres::NoTls;

/// Where the machine's PostgreSQL is (`GANTRY_TEST_DATABASE_URL` overrides).
pub fn admin_url() -> String {
    std::env::var("GANTRY_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A direct connection, for checking what the server wrote.
pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("tests need PostgreSQL at {url}: {e}"));
    tokio::spawn(connection);
    client
}

/// A fresh database; dropped (forcefully) with the guard.
pub struct TempDatabase {
    admin_url: String,
    pub name: String,
}

impl TempDatabase {
    pub async fn create() -> TempDatabase {
        let admin_url = admin_url();
        let name = format!("gantry_test_{}", uuid::Uuid::new_v4().simple());
        connect(&admin_url)
            .await
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create a database");
        TempDatabase { admin_url, name }
    }

    pub fn url(&self) -> String {
        let (base, _) = self
            .admin_url
            .rsplit_once('/')
            .expect("the test URL names a database");
        format!("{base}/{}", self.name)
    }
}

impl Drop for TempDatabase {
    fn drop(&mut self) {
        let (url, name) = (self.admin_url.clone(), self.name.clone());
        // A runtime of its own on a thread of its own: Drop may run inside
        // the test's runtime.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async {
                if let Ok((client, connection)) = tokio_postgres::connect(&url, NoTls).await {
                    tokio::spawn(connection);
                    let _ = client
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                }
            });
        })
        .join();
    }
}
