//! SIGHUP: what `serve` does when told to reload. Its default action ends the process, and a
//! systemd `ExecReload=` or a reload script sends it to every service alike, so `serve` always
//! catches it: with TLS it reads the certificate again, without it there is nothing to do.

/// Runs `reload` at every SIGHUP from now on. Call it within the runtime, before the server
/// says it listens: the signal is caught from the moment this returns.
pub fn on_hangup(mut reload: impl FnMut() + Send + 'static) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::hangup()) {
            Ok(mut hangups) => {
                tokio::spawn(async move {
                    while hangups.recv().await.is_some() {
                        reload();
                    }
                });
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGHUP, which will stop otpd");
            }
        }
    }
    #[cfg(not(unix))]
    drop(reload);
}
