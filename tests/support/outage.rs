//! PostgreSQL outages for tests: an admin connection that terminates a test
//! database's backends, and a guard that makes it refuse connections until
//! restored.

#![allow(dead_code)]

/// A connection to the database named by `DATABASE_URL`, never to the
/// test's own, so that it survives what it does to that one.
pub struct Admin(sqlx::PgConnection);

impl Admin {
    pub async fn connect() -> Admin {
        use sqlx::Connection;
        Admin(
            sqlx::PgConnection::connect(&super::admin_url())
                .await
                .expect("an admin connection to PostgreSQL"),
        )
    }

    /// Terminates every backend connected to `db`; returns how many.
    pub async fn terminate(&mut self, db: &str) -> u64 {
        let killed: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = $1 AND pid <> pg_backend_pid()) AS t",
        )
        .bind(db)
        .fetch_one(&mut self.0)
        .await
        .expect("pg_terminate_backend");
        killed as u64
    }
}

/// `ALTER DATABASE ... ALLOW_CONNECTIONS false` on the test's database
/// until restored; dropped without [`ConnectionsBlocked::restore`] (a
/// failed assertion), it restores on a thread of its own, so that a
/// released database never stays closed for the test that reuses it.
pub struct ConnectionsBlocked {
    db: Option<String>,
}

impl ConnectionsBlocked {
    pub async fn block(admin: &mut Admin, db: &str) -> ConnectionsBlocked {
        use sqlx::Executor;
        admin
            .0
            .execute(format!(r#"ALTER DATABASE "{db}" ALLOW_CONNECTIONS false"#).as_str())
            .await
            .expect("ALTER DATABASE ... ALLOW_CONNECTIONS false");
        ConnectionsBlocked {
            db: Some(db.to_owned()),
        }
    }

    pub async fn restore(mut self, admin: &mut Admin) {
        use sqlx::Executor;
        if let Some(db) = self.db.take() {
            admin
                .0
                .execute(format!(r#"ALTER DATABASE "{db}" ALLOW_CONNECTIONS true"#).as_str())
                .await
                .expect("ALTER DATABASE ... ALLOW_CONNECTIONS true");
        }
    }
}

impl Drop for ConnectionsBlocked {
    fn drop(&mut self) {
        let Some(db) = self.db.take() else {
            return;
        };
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async {
                use sqlx::{Connection, Executor};
                if let Ok(mut conn) = sqlx::PgConnection::connect(&super::admin_url()).await {
                    let sql = format!(r#"ALTER DATABASE "{db}" ALLOW_CONNECTIONS true"#);
                    let _ = conn.execute(sql.as_str()).await;
                }
            });
        })
        .join();
    }
}
