//! Headless Chromium, driven over the DevTools protocol: a page stays open while the test
//! acts, and its DOM is read as often as needed (a `--dump-dom` run ends at the page's load).

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::Message;

/// A running headless Chromium.
pub struct Browser {
    _child: tokio::process::Child,
    _profile: tempfile::TempDir,
    devtools: String,
}

/// One tab, over its DevTools socket.
pub struct Tab {
    socket: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next_id: u64,
}

impl Browser {
    /// Starts Chromium (`CHROMIUM`, else `chromium`), headless, on a fresh profile.
    pub async fn launch() -> Self {
        let profile = tempfile::tempdir().unwrap();
        let browser = std::env::var("CHROMIUM").unwrap_or_else(|_| "chromium".into());
        let mut child = tokio::process::Command::new(&browser)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("{browser}: {e} (`cargo xtask doctor` checks for it)"));
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let find = async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    return url.trim().to_owned();
                }
            }
            panic!("chromium exited without a DevTools address");
        };
        let socket = tokio::time::timeout(Duration::from_secs(30), find)
            .await
            .expect("chromium did not start within 30 s");
        // ws://127.0.0.1:<port>/devtools/browser/<id> → http://127.0.0.1:<port>
        let devtools = socket
            .replacen("ws://", "http://", 1)
            .split("/devtools/")
            .next()
            .unwrap()
            .to_owned();
        // Chromium's stderr must keep draining, or it blocks writing to it.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self {
            _child: child,
            _profile: profile,
            devtools,
        }
    }

    /// Opens `url` in a new tab.
    pub async fn open(&self, url: &str) -> Tab {
        let target: Value = reqwest::Client::new()
            .put(format!("{}/json/new?{url}", self.devtools))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let address = target["webSocketDebuggerUrl"].as_str().unwrap();
        let (socket, _) = tokio_tungstenite::connect_async(address).await.unwrap();
        Tab { socket, next_id: 0 }
    }
}

impl Tab {
    /// The value of a JavaScript expression in the page.
    pub async fn evaluate(&mut self, expression: &str) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let call = json!({
            "id": id,
            "method": "Runtime.evaluate",
            "params": { "expression": expression, "returnByValue": true }
        });
        self.socket
            .send(Message::text(call.to_string()))
            .await
            .unwrap();
        loop {
            let message = tokio::time::timeout(Duration::from_secs(30), self.socket.next())
                .await
                .expect("no DevTools answer within 30 s")
                .expect("the DevTools socket closed")
                .unwrap();
            let Message::Text(text) = message else {
                continue;
            };
            let answer: Value = serde_json::from_str(&text).unwrap();
            if answer["id"] == id {
                return answer["result"]["result"]["value"].clone();
            }
        }
    }
}
