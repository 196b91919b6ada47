//! Turning options into the things otpd runs on: the store, the server key and the console
//! password.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use otpd_api::console::{ConsolePassword, MIN_PASSWORD_CHARS};
use otpd_core::ports::Store;
use otpd_core::{Clock, ServerKey};
use otpd_store::{PgStore, PgStoreOptions, SqliteStore};
use zeroize::Zeroizing;

use crate::CommandError;
use crate::cli::{GlobalOptions, ServeOptions};

/// Where the database is.
#[derive(Clone, PartialEq, Eq)]
pub enum DatabaseLocation {
    Sqlite(PathBuf),
    Postgres { url: String, pool_size: usize },
}

/// Never prints a PostgreSQL URL: it may hold a password.
impl std::fmt::Debug for DatabaseLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sqlite(path) => f.debug_tuple("Sqlite").field(path).finish(),
            Self::Postgres { pool_size, .. } => f
                .debug_struct("Postgres")
                .field("pool_size", pool_size)
                .finish_non_exhaustive(),
        }
    }
}

impl DatabaseLocation {
    pub fn from_options(options: &GlobalOptions) -> Result<Self, CommandError> {
        let Some(url) = options
            .database_url
            .as_deref()
            .filter(|url| !url.is_empty())
        else {
            return Ok(Self::Sqlite(options.data_dir.join("otpd.db")));
        };
        if let Some(path) = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
        {
            if path.is_empty() {
                return Err(CommandError::Usage(
                    "sqlite:// needs a file path, as in sqlite:///var/lib/otpd/otpd.db".into(),
                ));
            }
            return Ok(Self::Sqlite(PathBuf::from(path)));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Self::Postgres {
                url: url.to_owned(),
                pool_size: options.database_pool_size,
            });
        }
        Err(CommandError::Usage(format!(
            "unsupported database URL {:?}: use sqlite://PATH or postgres://...",
            url.split(':').next().unwrap_or_default()
        )))
    }

    /// Whether one process owns the database (SQLite), so claims left at start are stale.
    pub fn is_single_process(&self) -> bool {
        self.sqlite_path().is_some()
    }

    /// The SQLite database file, if that is the store.
    pub fn sqlite_path(&self) -> Option<&Path> {
        match self {
            Self::Sqlite(path) => Some(path),
            Self::Postgres { .. } => None,
        }
    }

    pub async fn open(&self, clock: Arc<dyn Clock>) -> Result<Arc<dyn Store>, CommandError> {
        match self {
            Self::Sqlite(path) => {
                let store = SqliteStore::open(path, clock)
                    .with_context(|| format!("cannot open the database at {}", path.display()))?;
                Ok(Arc::new(store))
            }
            // The database's own clock judges time: `clock` is for the single-machine store.
            Self::Postgres { url, pool_size } => {
                let store = PgStore::connect(PgStoreOptions {
                    url: url.clone(),
                    pool_size: *pool_size,
                    clock: None,
                })
                .await
                .context("cannot open the PostgreSQL database")?;
                Ok(Arc::new(store))
            }
        }
    }
}

/// Where the server key is read from: `--server-key-file`, else `DATA_DIR/server.key`.
pub fn server_key_path(options: &GlobalOptions) -> PathBuf {
    options
        .server_key_file
        .clone()
        .unwrap_or_else(|| options.data_dir.join("server.key"))
}

/// Loads the server key: from `--server-key-file` if given (it must exist), else from
/// `DATA_DIR/server.key`, generating that file on first use.
pub fn server_key(options: &GlobalOptions) -> Result<ServerKey, CommandError> {
    let path = server_key_path(options);
    if options.server_key_file.is_none() {
        generate_if_missing(&path, "server key", ServerKey::generate_hex)?;
    }
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read the server key file {}", path.display()))?;
    ServerKey::from_hex(&text)
        .map_err(|error| CommandError::Usage(format!("{}: {error}", path.display())))
}

/// The web console's operator password and the file it came from: `--console-password-file` if
/// given (it must exist), else `DATA_DIR/console.password`, generated on first use; `None` with
/// `--no-console`.
pub fn console_password(
    global: &GlobalOptions,
    serve: &ServeOptions,
) -> Result<Option<(ConsolePassword, PathBuf)>, CommandError> {
    if serve.no_console {
        return Ok(None);
    }
    let path = match &serve.console_password_file {
        Some(path) => path.clone(),
        None => {
            let path = global.data_dir.join("console.password");
            generate_if_missing(&path, "console password", || {
                let mut bytes = Zeroizing::new([0u8; 16]);
                otpd_core::crypto::fill_random(bytes.as_mut());
                Zeroizing::new(hex::encode(bytes.as_ref()))
            })?;
            path
        }
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read the console password file {}", path.display()))?;
    let password = ConsolePassword::parse(&text).ok_or_else(|| {
        CommandError::Usage(format!(
            "{}: the console password must have at least {MIN_PASSWORD_CHARS} characters",
            path.display()
        ))
    })?;
    Ok(Some((password, path)))
}

/// Creates `path` (mode 0600) holding `contents()` and a line end, unless it exists.
fn generate_if_missing(
    path: &Path,
    what: &str,
    contents: impl FnOnce() -> Zeroizing<String>,
) -> Result<(), CommandError> {
    if path.exists() {
        return Ok(());
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(mut file) => {
            let secret = contents();
            file.write_all(secret.as_bytes())
                .and_then(|()| file.write_all(b"\n"))
                .and_then(|()| file.sync_all())
                .with_context(|| format!("cannot write the {what} to {}", path.display()))?;
            Ok(())
        }
        // Another process created it first: use theirs.
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(error) => Err(anyhow::Error::new(error)
            .context(format!("cannot create the {what} file {}", path.display()))
            .into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(data_dir: &Path, url: Option<&str>) -> GlobalOptions {
        GlobalOptions {
            data_dir: data_dir.to_owned(),
            database_url: url.map(str::to_owned),
            database_pool_size: 16,
            server_key_file: None,
        }
    }

    #[test]
    fn database_locations() {
        let dir = Path::new("/data");
        assert_eq!(
            DatabaseLocation::from_options(&options(dir, None)).ok(),
            Some(DatabaseLocation::Sqlite("/data/otpd.db".into()))
        );
        assert_eq!(
            DatabaseLocation::from_options(&options(dir, Some("sqlite:///tmp/x.db"))).ok(),
            Some(DatabaseLocation::Sqlite("/tmp/x.db".into()))
        );
        let postgres =
            DatabaseLocation::from_options(&options(dir, Some("postgres://otpd:s3cret@db/otpd")))
                .expect("postgres");
        assert!(!postgres.is_single_process());
        assert!(
            !format!("{postgres:?}").contains("s3cret"),
            "a URL's password never reaches a log"
        );
        assert!(matches!(
            DatabaseLocation::from_options(&options(dir, Some("mysql://x"))),
            Err(CommandError::Usage(_))
        ));
        assert!(matches!(
            DatabaseLocation::from_options(&options(dir, Some("sqlite://"))),
            Err(CommandError::Usage(_))
        ));
    }

    #[test]
    fn the_key_is_generated_once_and_kept() {
        let dir = tempfile::tempdir().expect("dir");
        let options = options(dir.path(), None);
        server_key(&options).expect("generated");
        let first = std::fs::read_to_string(dir.path().join("server.key")).expect("written");
        server_key(&options).expect("loaded");
        let second = std::fs::read_to_string(dir.path().join("server.key")).expect("kept");
        assert_eq!(first, second);
        assert_eq!(first.trim().len(), 64);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("server.key"))
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn a_named_key_file_must_exist_and_be_well_formed() {
        let dir = tempfile::tempdir().expect("dir");
        let mut options = options(dir.path(), None);
        options.server_key_file = Some(dir.path().join("missing.key"));
        assert!(matches!(server_key(&options), Err(CommandError::Failed(_))));
        std::fs::write(dir.path().join("bad.key"), "not hex").expect("write");
        options.server_key_file = Some(dir.path().join("bad.key"));
        assert!(matches!(server_key(&options), Err(CommandError::Usage(_))));
    }
}
