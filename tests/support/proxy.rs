//! A TCP proxy between the operator and the API server (issue 13, campaign 2) that makes the
//! API server slow and unreliable: every chunk of bytes is held for a latency, and every
//! connection can be cut on demand or on a timer. TLS passes through untouched (the serving
//! certificate names 127.0.0.1, so a kubeconfig pointing at the proxy still verifies it).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy counted.
#[derive(Debug, Default)]
pub struct Counters {
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Connections cut by the proxy.
    pub dropped: AtomicU64,
    /// Bytes forwarded (both ways).
    pub bytes: AtomicU64,
}

/// A running proxy; it stops when dropped.
pub struct Proxy {
    /// Where it listens.
    pub address: SocketAddr,
    /// What it counted.
    pub counters: Arc<Counters>,
    cut: watch::Sender<u64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `upstream`, holding each chunk for
    /// `latency`.
    pub async fn start(upstream: SocketAddr, latency: Duration) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy binds");
        let address = listener.local_addr().expect("address");
        let counters = Arc::new(Counters::default());
        let (cut, cuts) = watch::channel(0u64);
        let accept_counters = counters.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                accept_counters.connections.fetch_add(1, Ordering::Relaxed);
                let counters = accept_counters.clone();
                let mut cuts = cuts.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    let up = pump(client_read, server_write, latency, counters.clone());
                    let down = pump(server_read, client_write, latency, counters.clone());
                    cuts.borrow_and_update();
                    tokio::select! {
                        _ = up => {}
                        _ = down => {}
                        _ = cuts.changed() => {
                            counters.dropped.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        Proxy {
            address,
            counters,
            cut,
            tasks: vec![accept],
        }
    }

    /// Cuts every open connection now.
    pub fn cut_all(&self) {
        self.cut.send_modify(|n| *n += 1);
    }

    /// Cuts every open connection every `period`, until the proxy is dropped.
    pub fn cut_every(&mut self, period: Duration) {
        let cut = self.cut.clone();
        self.tasks.push(tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                cut.send_modify(|n| *n += 1);
            }
        }));
    }

    /// A copy of `kubeconfig` whose server is this proxy; written next to `dir`.
    pub fn kubeconfig(&self, kubeconfig: &Path, dir: &Path) -> PathBuf {
        let text = std::fs::read_to_string(kubeconfig).expect("kubeconfig");
        let rewritten: String = text
            .lines()
            .map(|line| match line.trim_start().strip_prefix("server:") {
                Some(_) => {
                    let indent = &line[..line.len() - line.trim_start().len()];
                    format!("{indent}server: https://{}\n", self.address)
                }
                None => format!("{line}\n"),
            })
            .collect();
        let path = dir.join("kubeconfig-via-proxy");
        std::fs::write(&path, rewritten).expect("proxy kubeconfig");
        path
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut_all();
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Copies `from` to `to`, holding each chunk for `latency`.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    latency: Duration,
    counters: Arc<Counters>,
) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            break;
        }
        counters.bytes.fetch_add(n as u64, Ordering::Relaxed);
    }
    let _ = to.shutdown().await;
}

/// The `host:port` of a kubeconfig's server URL.
pub fn upstream(kubeconfig: &Path) -> SocketAddr {
    let text = std::fs::read_to_string(kubeconfig).expect("kubeconfig");
    let server = text
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("server:"))
        .expect("a server line")
        .trim()
        .trim_matches('"');
    let hostport = server
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/');
    hostport.parse().expect("server is 127.0.0.1:PORT")
}
