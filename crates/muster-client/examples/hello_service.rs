//! A small HTTP service that registers itself in muster and deregisters on
//! Ctrl-C.
//!
//! ```sh
//! cargo run -p muster-client --example hello_service -- http://127.0.0.1:2379 hello-1
//! ```
//!
//! Arguments: the cluster's endpoint (default `http://127.0.0.1:2379`) and
//! the instance ID (default `hello-<pid>`). It listens on a free loopback
//! port and answers every request with `hello from <id>`.

use std::time::Duration;

use muster_client::{Client, ClientConfig, Instance, Registration, RegistrationConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let endpoint = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:2379".into());
    let id = args
        .next()
        .unwrap_or_else(|| format!("hello-{}", std::process::id()));

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let greeting = format!("hello from {id}\n");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let greeting = greeting.clone();
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                let _ =
                    tokio::time::timeout(Duration::from_secs(5), stream.read(&mut request)).await;
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{greeting}",
                    greeting.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });

    let client = Client::new(ClientConfig::new([endpoint]))?;
    let mut instance = Instance::new("hello", &id, addr.to_string());
    instance.tags = vec!["example".into()];
    let registration = Registration::start(client, instance, RegistrationConfig::default()).await?;
    println!("serving on {addr}, registered as {}", registration.key());
    tokio::signal::ctrl_c().await?;
    registration.deregister().await?;
    println!("deregistered");
    Ok(())
}
