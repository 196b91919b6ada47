//! A consistent copy of a SQLite database, taken while otpd serves from it.
//!
//! `VACUUM INTO` reads the database in one read transaction, which in WAL mode neither waits
//! for the writer nor holds it up, and writes a compacted copy. Copying the file instead could
//! catch a checkpoint halfway, and would miss whatever is still only in the write-ahead log.

use std::fs::File;
use std::path::{Path, PathBuf};

use rusqlite::OpenFlags;

use super::{close_connection, connect};

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{0} already exists: name a new file, so that no backup is overwritten")]
    TargetExists(PathBuf),
    #[error("there is no SQLite database at {0}")]
    NoDatabase(PathBuf),
    #[error("{0} is not a path SQLite can be given (it is not UTF-8)")]
    UnusablePath(PathBuf),
    #[error("cannot write the backup {0}: its directory does not exist")]
    NoDirectory(PathBuf),
    #[error("cannot read the database at {path}: {reason}")]
    Source { path: PathBuf, reason: String },
    #[error("cannot write the backup {path}: {error}")]
    Target {
        path: PathBuf,
        error: std::io::Error,
    },
}

/// Copies the database at `database` to the new file `target`, durably, and returns the copy's
/// size in bytes. The copy is written beside `target` under a `.partial` name and renamed when
/// it is whole, so that `target` is never a backup cut short.
pub fn back_up(database: &Path, target: &Path) -> Result<u64, BackupError> {
    if target.exists() {
        return Err(BackupError::TargetExists(target.to_owned()));
    }
    if !database.is_file() {
        return Err(BackupError::NoDatabase(database.to_owned()));
    }
    let directory = match target.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    if !directory.is_dir() {
        return Err(BackupError::NoDirectory(target.to_owned()));
    }
    let mut partial = target.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let partial_text = partial
        .to_str()
        .ok_or_else(|| BackupError::UnusablePath(partial.clone()))?;
    let target_error = |error| BackupError::Target {
        path: target.to_owned(),
        error,
    };
    // What an interrupted backup left.
    match std::fs::remove_file(&partial) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            return Err(target_error(error));
        }
        _ => {}
    }
    let source_error = |reason: String| BackupError::Source {
        path: database.to_owned(),
        reason,
    };
    // Read-write without create: a read-only connection cannot open a WAL database whose
    // shared-memory file is missing, and nothing here writes to the database.
    let connection = connect(
        database,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|error| source_error(error.to_string()))?;
    let copied = connection.execute("VACUUM INTO ?1", [partial_text]);
    close_connection(connection, "the backup's connection");
    if let Err(error) = copied {
        // A copy cut short (a full disk, say) is not left behind; nothing to do if it is gone.
        let _ = std::fs::remove_file(&partial);
        return Err(source_error(error.to_string()));
    }
    File::open(&partial)
        .and_then(|file| file.sync_all())
        .map_err(target_error)?;
    std::fs::rename(&partial, target).map_err(target_error)?;
    // The rename is durable once the directory is.
    File::open(directory)
        .and_then(|directory| directory.sync_all())
        .map_err(target_error)?;
    Ok(std::fs::metadata(target).map_err(target_error)?.len())
}
