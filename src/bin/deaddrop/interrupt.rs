//! Ctrl-C, caught from the moment the runtime starts: the handler is registered before anything
//! is offered or printed, so an early Ctrl-C still withdraws a drop and exits with code 130
//! instead of killing the process mid-way.

use std::io;

use tokio::sync::watch;

/// Resolves [`Interrupt::wait`] once Ctrl-C (SIGINT) arrives. Cloning shares the one handler.
#[derive(Clone)]
pub struct Interrupt(watch::Receiver<bool>);

impl Interrupt {
    /// Registers the handler now (synchronously) and watches it on a task. Must be called
    /// inside the runtime.
    pub fn install() -> io::Result<Interrupt> {
        let (tx, rx) = watch::channel(false);
        #[cfg(unix)]
        {
            let mut sig =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
            tokio::spawn(async move {
                if sig.recv().await.is_some() {
                    let _ = tx.send(true);
                }
            });
        }
        // Windows: Ctrl-C in the console (CTRL_C_EVENT). Closing the console window ends the
        // process at once; its drops go with it. Untested here: Wine cannot send a console
        // control event to a program under test.
        #[cfg(windows)]
        {
            let mut sig = tokio::signal::windows::ctrl_c()?;
            tokio::spawn(async move {
                if sig.recv().await.is_some() {
                    let _ = tx.send(true);
                }
            });
        }
        #[cfg(not(any(unix, windows)))]
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                let _ = tx.send(true);
            }
        });
        Ok(Interrupt(rx))
    }

    /// Resolves when Ctrl-C has been pressed (at once if it already was).
    pub async fn wait(&self) {
        let mut rx = self.0.clone();
        let _ = rx.wait_for(|pressed| *pressed).await;
    }
}
