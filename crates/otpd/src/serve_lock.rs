//! One `otpd serve` per SQLite database. A server on SQLite takes itself for the database's only
//! process: at start it hands back the outbox claims it finds, as left by a process that died
//! mid-send. A second server on the same file would take the first one's claims and send their
//! messages again, and the two would each run a WAL checkpointer meant to be the only one. So
//! `serve` holds an exclusive lock on a file beside the database while it runs. The admin
//! commands take none: they are meant to run beside the server.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::CommandError;

/// Held while the server runs. The lock belongs to the open file, so the kernel releases it
/// when the process ends, however it ends: a crashed server never blocks the next start.
#[derive(Debug)]
pub struct ServeLock {
    _file: File,
}

impl ServeLock {
    /// Locks `DATABASE.lock` (creating it and its directory), or says which process holds it.
    pub fn acquire(database: &Path) -> Result<Self, CommandError> {
        let path = lock_path(database);
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .with_context(|| format!("cannot open the lock file {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                let holder = match holder.trim() {
                    "" => String::new(),
                    pid => format!(" (pid {pid})"),
                };
                return Err(anyhow::anyhow!(
                    "another otpd serve{holder} is using the database {}; stop it first, or give \
                     this server its own --data-dir (it holds {})",
                    database.display(),
                    path.display()
                )
                .into());
            }
            Err(TryLockError::Error(error)) => {
                return Err(anyhow::Error::new(error)
                    .context(format!("cannot lock {}", path.display()))
                    .into());
            }
        }
        // Who holds it, for the message above and for an operator looking at the file.
        file.set_len(0)
            .and_then(|()| writeln!(file, "{}", std::process::id()))
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(Self { _file: file })
    }
}

fn lock_path(database: &Path) -> PathBuf {
    let mut name = database.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_server_on_the_same_database_is_refused_until_the_first_is_gone() {
        let dir = tempfile::tempdir().expect("dir");
        let database = dir.path().join("data").join("otpd.db");
        let first = ServeLock::acquire(&database).expect("the first server locks");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("data").join("otpd.db.lock"))
                .expect("lock file"),
            format!("{}\n", std::process::id())
        );

        let refused = ServeLock::acquire(&database).expect_err("a second lock is refused");
        let message = refused.to_string();
        assert!(
            message.starts_with(&format!(
                "another otpd serve (pid {}) is using the database",
                std::process::id()
            )),
            "{message}"
        );
        assert!(matches!(refused, CommandError::Failed(_)));

        drop(first);
        ServeLock::acquire(&database).expect("free again once the first server is gone");
    }

    #[test]
    fn servers_on_different_databases_do_not_meet() {
        let dir = tempfile::tempdir().expect("dir");
        let _one = ServeLock::acquire(&dir.path().join("one.db")).expect("one");
        let _two = ServeLock::acquire(&dir.path().join("two.db")).expect("two");
    }
}
