//! A TCP proxy on 127.0.0.1 that can cut every connection through it on command, to test what
//! clients do when the link drops mid-stream. New connections are accepted after a cut, unless
//! the proxy is blocked (a network partition: every connection is dropped until unblocked).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;

pub struct Proxy {
    pub addr: String,
    cut: broadcast::Sender<()>,
    pub connections: Arc<AtomicU64>,
    blocked: Arc<AtomicBool>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Forwards 127.0.0.1:<random port> to `target` (an `http://host:port` address), with
    /// Nagle on (see [`Proxy::start_with`]).
    pub async fn start(target: &str) -> Self {
        Self::start_with(target, false).await
    }

    /// As [`Proxy::start`]; `nodelay` sets TCP_NODELAY on both sockets, as the brokers' own
    /// sockets have. Without it Nagle and delayed ACKs hold small Raft messages back about
    /// 40 ms per hop (a metadata commit through the proxies takes ~40 ms instead of ~4 ms).
    /// The fault suite runs without it: with it, its isolated-leader round stalls the producer
    /// on the cut-off leader (which still answers as leader) in about one run in three, the
    /// client failover gap issue 20 names.
    pub async fn start_with(target: &str, nodelay: bool) -> Self {
        let target: SocketAddr = target.trim_start_matches("http://").parse().expect("target address");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = format!("http://{}", listener.local_addr().expect("addr"));
        let (cut, _) = broadcast::channel(16);
        let connections = Arc::new(AtomicU64::new(0));
        let blocked = Arc::new(AtomicBool::new(false));
        let (cut2, conns, blocked2) = (cut.clone(), connections.clone(), blocked.clone());
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if blocked2.load(Ordering::Acquire) {
                    continue; // dropped: the peer sees its connection reset
                }
                conns.fetch_add(1, Ordering::Relaxed);
                let mut cut_rx = cut2.subscribe();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else { return };
                    if nodelay {
                        let _ = (client.set_nodelay(true), server.set_nodelay(true));
                    }
                    let (mut client, mut server) = (client, server);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut_rx.recv() => {} // dropping both sockets cuts the link
                    }
                });
            }
        });
        Self { addr, cut, connections, blocked, accept }
    }

    /// Blocks (cuts every connection and refuses new ones) or unblocks the link.
    pub fn block(&self, blocked: bool) {
        self.blocked.store(blocked, Ordering::Release);
        if blocked {
            self.cut();
        }
    }

    /// Drops every connection currently open through the proxy.
    pub fn cut(&self) {
        let _ = self.cut.send(());
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}
