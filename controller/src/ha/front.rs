//! The ports a controller on etcd holds for its whole life, whatever its
//! role: each accepted connection is handed to whichever server runs now
//! (the leader's, or the standby's that redirects to the leader). Bound
//! once at start, a port in use is named then, and is never lost to
//! another process between two roles.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::api::server::Accepting;

type Handoff = mpsc::Sender<(TcpStream, SocketAddr)>;

/// One held port.
struct Port {
    addr: SocketAddr,
    to: Arc<Mutex<Option<Handoff>>>,
    accepting: tokio::task::JoinHandle<()>,
}

impl Port {
    fn hold(listener: TcpListener) -> io::Result<Self> {
        let addr = listener.local_addr()?;
        let to: Arc<Mutex<Option<Handoff>>> = Arc::default();
        let current = to.clone();
        let accepting = tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok(conn) => {
                        let handoff = current.lock().unwrap_or_else(|p| p.into_inner()).clone();
                        // Between two roles, or the server is full: the
                        // connection is closed and the client tries again.
                        if let Some(h) = handoff {
                            let _ = h.try_send(conn);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, %addr, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                }
            }
        });
        Ok(Self { addr, to, accepting })
    }

    /// From now on, connections go to the returned source (and no longer
    /// to the one handed out before).
    fn hand_over(&self) -> Accepting {
        let (tx, rx) = mpsc::channel(1024);
        *self.to.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
        Accepting::Handed {
            from: rx,
            addr: self.addr,
        }
    }
}

impl Port {
    /// Connections are closed as they come, until the next hand-over.
    fn refuse(&self) {
        *self.to.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

impl Drop for Port {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

/// The gRPC port and, when configured, the board's.
pub(crate) struct Front {
    api: Port,
    board: Option<Port>,
}

impl Front {
    pub(crate) fn hold(listeners: crate::Listeners) -> io::Result<Self> {
        Ok(Self {
            api: Port::hold(listeners.api)?,
            board: listeners.board.map(Port::hold).transpose()?,
        })
    }

    /// Sources for the next server: every connection from now on goes to
    /// them.
    pub(crate) fn hand_over(&self) -> (Accepting, Option<Accepting>) {
        (self.api.hand_over(), self.board.as_ref().map(Port::hand_over))
    }

    /// For a standby: the gRPC port only (the board's connections are
    /// closed: the board is the leader's).
    pub(crate) fn hand_over_api(&self) -> Accepting {
        if let Some(b) = &self.board {
            b.refuse();
        }
        self.api.hand_over()
    }
}
