//! Discovers the `hello` service (see the `hello_service` example) and
//! calls it through a load balancer.
//!
//! ```sh
//! cargo run -p muster-client --example hello_client -- http://127.0.0.1:2379 10
//! ```
//!
//! Arguments: the cluster's endpoint (default `http://127.0.0.1:2379`) and
//! the number of calls (default 10, one every 500 ms). Each call picks an
//! instance by power of two choices over requests in flight, among the
//! healthy instances of the cached, continuously watched list.

use std::time::Duration;

use muster_client::balance::LeastOutstanding;
use muster_client::{Client, ClientConfig, Discovery, DiscoveryConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let endpoint = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:2379".into());
    let calls: u32 = args.next().map_or(Ok(10), |n| n.parse())?;

    let client = Client::new(ClientConfig::new([endpoint]))?;
    let hello = Discovery::start(client, "hello", DiscoveryConfig::default()).await?;
    let balancer = LeastOutstanding::default();
    for _ in 0..calls {
        let view = hello.view();
        match hello.pick(&balancer) {
            None => println!(
                "no healthy instance of hello (revision {}, {:?})",
                view.revision, view.freshness
            ),
            Some(pick) => {
                let addr = pick.instance().addr.clone();
                match call(&addr).await {
                    Ok(body) => print!("{addr}: {body}"),
                    Err(e) => println!("{addr}: {e}"),
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(())
}

/// `GET /` on `addr`: the body.
async fn call(addr: &str) -> anyhow::Result<String> {
    let mut stream =
        tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
            .await??;
    stream
        .write_all(
            format!("GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(2), stream.read_to_string(&mut response)).await??;
    Ok(response
        .split_once("\r\n\r\n")
        .map_or(response.clone(), |(_, body)| body.to_string()))
}
