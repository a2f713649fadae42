//! carve's state database: one SQLite file (`carve.db`, WAL) in the state directory. It holds the
//! simulated node (when the simulated backend is used), the last desired state per GPU (re-applied
//! at boot) and the apply journal (intended operations, written before any GPU is touched).
//!
//! Values are stored as JSON documents: the schema of what they contain belongs to the crates
//! that write them. Every write is one transaction.

use rusqlite::{params, Connection, OptionalExtension};
use serde::{de::DeserializeOwned, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state database {path}: {source}")]
    Db {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("{path}: {source}")]
    Dir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("state database {path}: stored {what} is unreadable: {source}")]
    Decode {
        path: String,
        what: String,
        #[source]
        source: serde_json::Error,
    },
}

pub type Result<T> = std::result::Result<T, StateError>;

/// A journal record: one apply, from intent to completion.
#[derive(Debug, Clone, PartialEq)]
pub struct JournalEntry {
    pub id: i64,
    pub started: String,
    pub backend: String,
    pub target: serde_json::Value,
    pub ops: serde_json::Value,
    pub done: i64,
    /// One of [`status`]'s words.
    pub status: String,
}

/// What a journal entry's `status` says about its apply.
pub mod status {
    /// Journaled before its first operation and not ended yet: while no apply runs, a crash
    /// interrupted it.
    pub const RUNNING: &str = "running";
    /// Every operation ran.
    pub const DONE: &str = "done";
    /// An operation failed; the journal's `done` says how many ran before it.
    pub const FAILED: &str = "failed";
    /// A crash interrupted it and a later apply took its GPUs over, going straight from what
    /// they held to its own targets (recorded in the same transaction as that apply's entry).
    pub const SUPERSEDED: &str = "superseded";
    // Older carve versions finished an interrupted apply by replaying it under a new entry and
    // marked the old one `interrupted`; such entries are history, like `done`.
}

/// A new apply's journal entry: where it runs, its targets and its operations.
#[derive(Debug, Clone, Copy)]
pub struct NewEntry<'a> {
    pub backend: &'a str,
    pub target: &'a serde_json::Value,
    pub ops: &'a serde_json::Value,
}

pub struct Store {
    conn: Connection,
    path: PathBuf,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS desired (gpu_uuid TEXT PRIMARY KEY, target TEXT NOT NULL, updated TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS journal (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    started TEXT NOT NULL,
    backend TEXT NOT NULL,
    target TEXT NOT NULL,
    ops TEXT NOT NULL,
    done INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL
);
";

impl Store {
    /// Opens (creating if needed) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Store> {
        std::fs::create_dir_all(dir).map_err(|source| StateError::Dir {
            path: dir.display().to_string(),
            source,
        })?;
        let path = dir.join("carve.db");
        let db = |source| StateError::Db {
            path: path.display().to_string(),
            source,
        };
        let conn = Connection::open(&path).map_err(db)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(db)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(db)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(db)?;
        conn.execute_batch(SCHEMA).map_err(db)?;
        Ok(Store { conn, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Takes the node-wide apply lock (`apply.lock` beside the database), waiting for another
    /// holder. The operating system releases it when the process ends, crash or not.
    pub fn lock_apply(&self, on_wait: impl FnOnce()) -> Result<std::fs::File> {
        let path = self.path.with_file_name("apply.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| StateError::Dir {
                path: path.display().to_string(),
                source,
            })?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                on_wait();
                file.lock().map_err(|source| StateError::Dir {
                    path: path.display().to_string(),
                    source,
                })?;
            }
            Err(std::fs::TryLockError::Error(source)) => {
                return Err(StateError::Dir {
                    path: path.display().to_string(),
                    source,
                })
            }
        }
        Ok(file)
    }

    fn db(&self, source: rusqlite::Error) -> StateError {
        StateError::Db {
            path: self.path.display().to_string(),
            source,
        }
    }

    fn decode<T: DeserializeOwned>(&self, what: &str, text: &str) -> Result<T> {
        serde_json::from_str(text).map_err(|source| StateError::Decode {
            path: self.path.display().to_string(),
            what: what.to_string(),
            source,
        })
    }

    /// A JSON value stored under `key`.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        let text: Option<String> = self
            .conn
            .query_row("SELECT value FROM kv WHERE key = ?1", [key], |r| r.get(0))
            .optional()
            .map_err(|e| self.db(e))?;
        text.map(|t| self.decode(key, &t)).transpose()
    }

    pub fn put<T: Serialize>(&self, key: &str, value: &T) -> Result<()> {
        let text = serde_json::to_string(value).expect("serialisable");
        self.conn
            .execute(
                "INSERT INTO kv (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                params![key, text],
            )
            .map_err(|e| self.db(e))?;
        Ok(())
    }

    pub fn delete(&self, key: &str) -> Result<()> {
        self.conn
            .execute("DELETE FROM kv WHERE key = ?1", [key])
            .map_err(|e| self.db(e))?;
        Ok(())
    }

    /// Reads `key`, lets `f` change it, and writes it back, in one immediate transaction: no other
    /// process can interleave.
    pub fn update<T, R>(&mut self, key: &str, f: impl FnOnce(&mut Option<T>) -> R) -> Result<R>
    where
        T: Serialize + DeserializeOwned,
    {
        let path = self.path.display().to_string();
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|source| StateError::Db {
                path: path.clone(),
                source,
            })?;
        let text: Option<String> = tx
            .query_row("SELECT value FROM kv WHERE key = ?1", [key], |r| r.get(0))
            .optional()
            .map_err(|source| StateError::Db {
                path: path.clone(),
                source,
            })?;
        let mut value: Option<T> = match text {
            Some(t) => Some(
                serde_json::from_str(&t).map_err(|source| StateError::Decode {
                    path: path.clone(),
                    what: key.to_string(),
                    source,
                })?,
            ),
            None => None,
        };
        let r = f(&mut value);
        match &value {
            Some(v) => tx.execute(
                "INSERT INTO kv (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                params![key, serde_json::to_string(v).expect("serialisable")],
            ),
            None => tx.execute("DELETE FROM kv WHERE key = ?1", [key]),
        }
        .map_err(|source| StateError::Db {
            path: path.clone(),
            source,
        })?;
        tx.commit()
            .map_err(|source| StateError::Db { path, source })?;
        Ok(r)
    }

    // --- desired state ------------------------------------------------------------------------

    /// Records the desired state of GPUs (replacing earlier records for the same GPUs) and, in
    /// the same transaction, sets (`Some`) or deletes (`None`) the key–value documents that go
    /// with it (the plan the node follows), so that a crash never leaves one without the other.
    pub fn set_desired(
        &self,
        targets: &[(String, serde_json::Value)],
        with: &[(&str, Option<serde_json::Value>)],
    ) -> Result<()> {
        self.begin_apply(targets, with, None, &[]).map(|_| ())
    }

    /// Records an apply before its first operation, in one transaction: the desired state of its
    /// GPUs and the documents that go with it (as [`Store::set_desired`]), its journal entry
    /// (`entry`, when it has operations; `running`, its id returned), and the interrupted entries
    /// it takes over (`supersedes`: those still `running` become `superseded`). A crash leaves
    /// either all of it or none: some entry stays `running` until an apply ends.
    pub fn begin_apply(
        &self,
        targets: &[(String, serde_json::Value)],
        with: &[(&str, Option<serde_json::Value>)],
        entry: Option<NewEntry<'_>>,
        supersedes: &[i64],
    ) -> Result<Option<i64>> {
        let tx = self.conn.unchecked_transaction().map_err(|e| self.db(e))?;
        for (uuid, target) in targets {
            tx.execute(
                "INSERT INTO desired (gpu_uuid, target, updated) VALUES (?1, ?2, datetime('now'))
                 ON CONFLICT(gpu_uuid) DO UPDATE SET target = excluded.target, updated = excluded.updated",
                params![uuid, target.to_string()],
            )
            .map_err(|e| self.db(e))?;
        }
        for (key, value) in with {
            match value {
                Some(v) => tx.execute(
                    "INSERT INTO kv (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    params![key, v.to_string()],
                ),
                None => tx.execute("DELETE FROM kv WHERE key = ?1", [key]),
            }
            .map_err(|e| self.db(e))?;
        }
        for id in supersedes {
            tx.execute(
                "UPDATE journal SET status = ?2 WHERE id = ?1 AND status = ?3",
                params![id, status::SUPERSEDED, status::RUNNING],
            )
            .map_err(|e| self.db(e))?;
        }
        let id = match entry {
            Some(e) => {
                tx.execute(
                    "INSERT INTO journal (started, backend, target, ops, done, status) VALUES (datetime('now'), ?1, ?2, ?3, 0, ?4)",
                    params![e.backend, e.target.to_string(), e.ops.to_string(), status::RUNNING],
                )
                .map_err(|e| self.db(e))?;
                Some(tx.last_insert_rowid())
            }
            None => None,
        };
        tx.commit().map_err(|e| self.db(e))?;
        Ok(id)
    }

    /// Every recorded desired state: (GPU UUID, target).
    pub fn desired(&self) -> Result<Vec<(String, serde_json::Value)>> {
        let mut stmt = self
            .conn
            .prepare("SELECT gpu_uuid, target FROM desired ORDER BY gpu_uuid")
            .map_err(|e| self.db(e))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .map_err(|e| self.db(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (uuid, text) = row.map_err(|e| self.db(e))?;
            out.push((uuid, self.decode("desired state", &text)?));
        }
        Ok(out)
    }

    // --- journal ------------------------------------------------------------------------------

    /// Records an apply before it starts (its journal entry alone; an apply records it with its
    /// desired state through [`Store::begin_apply`]). Returns its id.
    pub fn journal_begin(
        &self,
        backend: &str,
        target: &serde_json::Value,
        ops: &serde_json::Value,
    ) -> Result<i64> {
        self.conn
            .execute(
                "INSERT INTO journal (started, backend, target, ops, done, status) VALUES (datetime('now'), ?1, ?2, ?3, 0, ?4)",
                params![backend, target.to_string(), ops.to_string(), status::RUNNING],
            )
            .map_err(|e| self.db(e))?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Records that the first `done` operations of apply `id` completed.
    pub fn journal_progress(&self, id: i64, done: i64) -> Result<()> {
        self.conn
            .execute(
                "UPDATE journal SET done = ?2 WHERE id = ?1",
                params![id, done],
            )
            .map_err(|e| self.db(e))?;
        Ok(())
    }

    pub fn journal_finish(&self, id: i64, status: &str) -> Result<()> {
        self.conn
            .execute(
                "UPDATE journal SET status = ?2 WHERE id = ?1",
                params![id, status],
            )
            .map_err(|e| self.db(e))?;
        Ok(())
    }

    /// Applies that started and never finished (a crash), oldest first.
    pub fn journal_unfinished(&self) -> Result<Vec<JournalEntry>> {
        self.journal_query(&format!("WHERE status = '{}' ORDER BY id", status::RUNNING))
    }

    /// The last `n` applies, newest first.
    pub fn journal_recent(&self, n: usize) -> Result<Vec<JournalEntry>> {
        self.journal_query(&format!("ORDER BY id DESC LIMIT {n}"))
    }

    fn journal_query(&self, tail: &str) -> Result<Vec<JournalEntry>> {
        let mut stmt = self
            .conn
            .prepare(&format!(
                "SELECT id, started, backend, target, ops, done, status FROM journal {tail}"
            ))
            .map_err(|e| self.db(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, i64>(5)?,
                    r.get::<_, String>(6)?,
                ))
            })
            .map_err(|e| self.db(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, started, backend, target, ops, done, status) = row.map_err(|e| self.db(e))?;
            out.push(JournalEntry {
                id,
                started,
                backend,
                target: self.decode("journal target", &target)?,
                ops: self.decode("journal operations", &ops)?,
                done,
                status,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "carve-state-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn kv_update_and_journal() {
        let dir = tmp();
        let mut s = Store::open(&dir).unwrap();
        assert_eq!(s.get::<u32>("x").unwrap(), None);
        s.update::<u32, _>("x", |v| *v = Some(v.unwrap_or(0) + 5))
            .unwrap();
        s.update::<u32, _>("x", |v| *v = Some(v.unwrap_or(0) + 5))
            .unwrap();
        assert_eq!(s.get::<u32>("x").unwrap(), Some(10));
        let id = s
            .journal_begin(
                "sim",
                &serde_json::json!({"a": 1}),
                &serde_json::json!([1, 2]),
            )
            .unwrap();
        s.journal_progress(id, 1).unwrap();
        // A second connection (another process) sees the unfinished apply.
        let s2 = Store::open(&dir).unwrap();
        let u = s2.journal_unfinished().unwrap();
        assert_eq!((u.len(), u[0].done), (1, 1));
        s.journal_finish(id, "done").unwrap();
        assert!(s2.journal_unfinished().unwrap().is_empty());
        s.set_desired(
            &[("GPU-1".into(), serde_json::json!({"x": 1}))],
            &[("plan", Some(serde_json::json!({"p": 1})))],
        )
        .unwrap();
        s.set_desired(&[("GPU-1".into(), serde_json::json!({"x": 2}))], &[])
            .unwrap();
        assert_eq!(
            s2.desired().unwrap(),
            vec![("GPU-1".to_string(), serde_json::json!({"x": 2}))]
        );
        // The documents that go with the desired state are set and removed with it.
        assert_eq!(
            s2.get::<serde_json::Value>("plan").unwrap(),
            Some(serde_json::json!({"p": 1}))
        );
        s.set_desired(&[], &[("plan", None)]).unwrap();
        assert_eq!(s2.get::<serde_json::Value>("plan").unwrap(), None);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_apply_supersedes_interrupted_ones_as_it_is_recorded() {
        let dir = tmp();
        let s = Store::open(&dir).unwrap();
        let v = |n: i64| serde_json::json!(n);
        let done = s.journal_begin("sim", &v(0), &v(0)).unwrap();
        s.journal_finish(done, status::DONE).unwrap();
        let crashed = s.journal_begin("sim", &v(1), &v(1)).unwrap();
        // The next apply: its desired state, its entry and the superseding, at once.
        let entry = NewEntry {
            backend: "sim",
            target: &v(2),
            ops: &v(2),
        };
        let next = s
            .begin_apply(
                &[("GPU-1".into(), v(2))],
                &[],
                Some(entry),
                &[crashed, done],
            )
            .unwrap()
            .expect("an entry");
        let by_id = |id: i64| {
            s.journal_recent(10)
                .unwrap()
                .into_iter()
                .find(|e| e.id == id)
                .unwrap()
        };
        assert_eq!(by_id(crashed).status, status::SUPERSEDED);
        // Only running entries are superseded.
        assert_eq!(by_id(done).status, status::DONE);
        let left = s.journal_unfinished().unwrap();
        assert_eq!((left.len(), left[0].id), (1, next));
        assert_eq!(s.desired().unwrap(), vec![("GPU-1".to_string(), v(2))]);
        // With nothing to run: no entry, the superseding still recorded.
        assert_eq!(s.begin_apply(&[], &[], None, &[next]).unwrap(), None);
        assert_eq!(by_id(next).status, status::SUPERSEDED);
        assert!(s.journal_unfinished().unwrap().is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
