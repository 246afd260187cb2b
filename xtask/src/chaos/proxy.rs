//! A TCP proxy between clients and a Kafka listener, for faults of the network rather than of
//! a process: latency added to every chunk each way, and every open connection dropped at once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The proxy's knobs, shared with its connections.
#[derive(Debug)]
pub(crate) struct Proxy {
    latency_ms: AtomicU64,
    /// Bumped to drop every connection open at that moment.
    drops: watch::Sender<u64>,
}

impl Proxy {
    /// Listens on `listen` and forwards each connection to `target`, until the runtime ends.
    pub(crate) async fn start(listen: SocketAddr, target: SocketAddr) -> anyhow::Result<Arc<Self>> {
        let listener = TcpListener::bind(listen).await?;
        let proxy = Arc::new(Self {
            latency_ms: AtomicU64::new(0),
            drops: watch::channel(0).0,
        });
        let accepting = Arc::clone(&proxy);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let proxy = Arc::clone(&accepting);
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(target).await {
                        proxy.relay(client, server).await;
                    }
                });
            }
        });
        Ok(proxy)
    }

    /// Adds `latency` before every chunk is passed on, each way (zero: none).
    pub(crate) fn set_latency(&self, latency: Duration) {
        let ms = u64::try_from(latency.as_millis()).unwrap_or(u64::MAX);
        self.latency_ms.store(ms, Ordering::Relaxed);
    }

    /// Closes every connection open now, as a network failure would.
    pub(crate) fn drop_connections(&self) {
        self.drops.send_modify(|n| *n += 1);
    }

    async fn relay(&self, client: TcpStream, server: TcpStream) {
        let _ = (client.set_nodelay(true), server.set_nodelay(true));
        let mut dropped = self.drops.subscribe();
        let (client_read, client_write) = client.into_split();
        let (server_read, server_write) = server.into_split();
        tokio::select! {
            () = self.pipe(client_read, server_write) => {}
            () = self.pipe(server_read, client_write) => {}
            _ = dropped.changed() => {}
        }
    }

    async fn pipe(
        &self,
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
    ) {
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let read = match from.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(read) => read,
            };
            let latency = self.latency_ms.load(Ordering::Relaxed);
            if latency > 0 {
                tokio::time::sleep(Duration::from_millis(latency)).await;
            }
            if to.write_all(&buffer[..read]).await.is_err() {
                return;
            }
        }
    }
}
