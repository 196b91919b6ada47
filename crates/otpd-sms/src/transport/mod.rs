//! Transports: where composed messages go.

mod console;
mod file;

use std::path::PathBuf;
use std::sync::Arc;

use otpd_core::ports::SmsTransport;

pub use console::ConsoleTransport;
pub use file::FileTransport;

/// A transport as named on the command line (`--sms`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransportSpec {
    Console,
    File(PathBuf),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("unknown SMS transport {0:?}: use `console` or `file:PATH`")]
    Unknown(String),
    #[error("`file:` needs a path, as in `file:/var/log/otpd-sms.jsonl`")]
    MissingPath,
}

impl std::str::FromStr for TransportSpec {
    type Err = SpecError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        if spec == "console" {
            return Ok(Self::Console);
        }
        if let Some(path) = spec.strip_prefix("file:") {
            if path.is_empty() {
                return Err(SpecError::MissingPath);
            }
            return Ok(Self::File(PathBuf::from(path)));
        }
        Err(SpecError::Unknown(spec.to_owned()))
    }
}

impl TransportSpec {
    pub fn build(&self) -> Arc<dyn SmsTransport> {
        match self {
            Self::Console => Arc::new(ConsoleTransport),
            Self::File(path) => Arc::new(FileTransport::new(path.clone())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        assert_eq!("console".parse(), Ok(TransportSpec::Console));
        assert_eq!(
            "file:/tmp/x".parse(),
            Ok(TransportSpec::File("/tmp/x".into()))
        );
        assert_eq!(
            "file:".parse::<TransportSpec>(),
            Err(SpecError::MissingPath)
        );
        assert!(matches!(
            "carrier-pigeon".parse::<TransportSpec>(),
            Err(SpecError::Unknown(_))
        ));
    }
}
