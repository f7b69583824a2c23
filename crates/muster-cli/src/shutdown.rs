//! SIGTERM and SIGINT (Ctrl-C), shared by the binaries: `muster`, `muster
//! agent` and `musterctl service register`.
//!
//! Invariant: the handlers are installed when [`Shutdown::install`]
//! returns, so a signal that arrives before [`Shutdown::wait`] is polled is
//! not lost.

/// SIGTERM and SIGINT handlers, installed before the work starts so a
/// signal that arrives during start-up still ends it cleanly.
pub(crate) struct Shutdown {
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
}

impl Shutdown {
    /// Installs the handlers.
    pub(crate) fn install() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Shutdown {
                terminate: signal(SignalKind::terminate())?,
                interrupt: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Shutdown {})
    }

    /// Resolves when either signal has arrived (also before this call).
    pub(crate) async fn wait(mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.terminate.recv() => {}
            _ = self.interrupt.recv() => {}
        }
        #[cfg(not(unix))]
        {
            let _ = &mut self;
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
