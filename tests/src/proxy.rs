//! A TCP proxy on loopback that a test can cut, to put a partition between
//! a client and a member.
//!
//! Invariants: while cut, nothing passes in either direction on any
//! connection, and new connections are accepted but go nowhere (a
//! black hole, as a dropped route looks to the client: no reset, no
//! answer). Healing closes every connection made before or during the cut,
//! so no stale bytes are delivered late, and forwards new ones again.
//! Dropping the proxy stops it and closes everything.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A cuttable proxy to one upstream address.
pub struct Proxy {
    addr: SocketAddr,
    /// `(cut, generation)`: connections of an older generation close.
    state: watch::Sender<(bool, u64)>,
    accept: JoinHandle<()>,
}

impl Proxy {
    /// A proxy on `127.0.0.1:0` to `upstream` (`http://host:port` or
    /// `host:port`).
    pub async fn start(upstream: &str) -> Proxy {
        let upstream: SocketAddr = upstream
            .trim_start_matches("http://")
            .parse()
            .expect("upstream host:port");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let (state, _) = watch::channel((false, 0u64));
        let states = state.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let _ = client.set_nodelay(true);
                tokio::spawn(connection(client, upstream, states.subscribe()));
            }
        });
        Proxy {
            addr,
            state,
            accept,
        }
    }

    /// The proxy's client URL, `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Starts the partition.
    pub fn cut(&self) {
        self.state.send_modify(|(cut, _)| *cut = true);
    }

    /// Ends the partition: every existing connection closes.
    pub fn heal(&self) {
        self.state.send_modify(|(cut, generation)| {
            *cut = false;
            *generation += 1;
        });
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        // Closes every connection.
        self.state.send_modify(|(_, generation)| *generation += 1);
    }
}

async fn connection(
    client: TcpStream,
    upstream: SocketAddr,
    mut state: watch::Receiver<(bool, u64)>,
) {
    let generation = state.borrow().1;
    // A connection made during a cut waits for the heal, which closes it.
    while state.borrow().0 {
        if state.changed().await.is_err() || state.borrow().1 != generation {
            return;
        }
    }
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = server.set_nodelay(true);
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let mut buf_up = vec![0u8; 64 * 1024];
    let mut buf_down = vec![0u8; 64 * 1024];
    loop {
        // While cut, wait for the heal (which closes this connection).
        if state.borrow().0 {
            loop {
                if state.changed().await.is_err() || state.borrow().1 != generation {
                    return;
                }
            }
        }
        tokio::select! {
            changed = state.changed() => {
                if changed.is_err() || state.borrow().1 != generation {
                    return;
                }
            }
            n = client_read.read(&mut buf_up) => match n {
                Ok(0) | Err(_) => return,
                Ok(n) => if server_write.write_all(&buf_up[..n]).await.is_err() { return },
            },
            n = server_read.read(&mut buf_down) => match n {
                Ok(0) | Err(_) => return,
                Ok(n) => if client_write.write_all(&buf_down[..n]).await.is_err() { return },
            },
        }
    }
}
