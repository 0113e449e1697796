//! A real SMTP server on loopback for the tests: it speaks enough ESMTP for lettre, keeps
//! every message it receives, and parses them (subject, plain-text and HTML parts).
//! It can be stopped and started again on the same port, to test delivery while it is down.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

#[derive(Debug, Clone)]
pub struct ReceivedEmail {
    pub to: Vec<String>,
    pub subject: String,
    pub text: String,
    pub html: String,
}

impl ReceivedEmail {
    /// The `token=` value of the first link in the plain-text part.
    pub fn token(&self) -> String {
        let start = self
            .text
            .find("token=")
            .expect("the email carries a token link")
            + "token=".len();
        self.text[start..]
            .split(|c: char| c.is_whitespace())
            .next()
            .unwrap()
            .to_string()
    }

    pub fn link(&self) -> String {
        let start = self.text.find("http").expect("the email carries a link");
        self.text[start..]
            .split(char::is_whitespace)
            .next()
            .unwrap()
            .to_string()
    }
}

pub struct SmtpSink {
    pub port: u16,
    messages: Arc<Mutex<Vec<ReceivedEmail>>>,
    server: Option<tokio::task::JoinHandle<()>>,
    /// Open client connections, closed by `stop` like a server going down would.
    sessions: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.stop();
    }
}

impl SmtpSink {
    pub async fn start() -> Self {
        Self::start_on(0, Arc::default()).await
    }

    async fn start_on(port: u16, messages: Arc<Mutex<Vec<ReceivedEmail>>>) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let store = messages.clone();
        let sessions: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let open = sessions.clone();
        let server = tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    break;
                };
                let store = store.clone();
                let task = tokio::spawn(async move {
                    let _ = session(socket, store).await;
                });
                open.lock().unwrap().push(task.abort_handle());
            }
        });
        SmtpSink {
            port,
            messages,
            server: Some(server),
            sessions,
        }
    }

    /// Stops listening: connections are refused until `restart`.
    pub fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
        for session in self.sessions.lock().unwrap().drain(..) {
            session.abort();
        }
    }

    pub async fn restart(&mut self) {
        self.stop();
        // The aborted task releases the port once it is dropped.
        for _ in 0..50 {
            if let Ok(listener) = std::net::TcpListener::bind(("127.0.0.1", self.port)) {
                drop(listener);
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut restarted = Self::start_on(self.port, self.messages.clone()).await;
        self.server = restarted.server.take();
        self.sessions = restarted.sessions.clone();
    }

    pub fn messages(&self) -> Vec<ReceivedEmail> {
        self.messages.lock().unwrap().clone()
    }

    pub fn messages_to(&self, address: &str) -> Vec<ReceivedEmail> {
        self.messages()
            .into_iter()
            .filter(|m| m.to.iter().any(|to| to == address))
            .collect()
    }

    /// Waits (up to 10 s) for the `nth` (1-based) message to `address` whose subject contains `subject`.
    pub async fn wait_for_nth(&self, address: &str, subject: &str, nth: usize) -> ReceivedEmail {
        for _ in 0..500 {
            let found: Vec<_> = self
                .messages_to(address)
                .into_iter()
                .filter(|m| m.subject.contains(subject))
                .collect();
            if found.len() >= nth {
                return found[nth - 1].clone();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "no email #{nth} to {address} about {subject:?}; received: {:?}",
            self.messages()
        );
    }

    pub async fn wait_for(&self, address: &str, subject: &str) -> ReceivedEmail {
        self.wait_for_nth(address, subject, 1).await
    }
}

async fn session(
    socket: tokio::net::TcpStream,
    store: Arc<Mutex<Vec<ReceivedEmail>>>,
) -> std::io::Result<()> {
    let (reader, mut writer) = socket.into_split();
    let mut reader = BufReader::new(reader);
    writer.write_all(b"220 sink.test ESMTP\r\n").await?;
    let mut recipients = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let command = line.trim_end().to_ascii_uppercase();
        if command.starts_with("EHLO") || command.starts_with("HELO") {
            writer
                .write_all(b"250-sink.test\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n")
                .await?;
        } else if command.starts_with("MAIL FROM") {
            recipients.clear();
            writer.write_all(b"250 OK\r\n").await?;
        } else if command.starts_with("RCPT TO") {
            let address = line.trim_end()[8..]
                .trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_string();
            recipients.push(address.to_lowercase());
            writer.write_all(b"250 OK\r\n").await?;
        } else if command == "DATA" {
            writer.write_all(b"354 go ahead\r\n").await?;
            let mut raw = Vec::new();
            loop {
                line.clear();
                if reader.read_line(&mut line).await? == 0 {
                    return Ok(());
                }
                if line == ".\r\n" || line == ".\n" {
                    break;
                }
                let unstuffed = line
                    .strip_prefix('.')
                    .filter(|_| line.starts_with(".."))
                    .unwrap_or(&line);
                raw.extend_from_slice(unstuffed.as_bytes());
            }
            let parsed = mail_parser::MessageParser::default()
                .parse(&raw)
                .expect("a parsable message");
            store.lock().unwrap().push(ReceivedEmail {
                to: recipients.clone(),
                subject: parsed.subject().unwrap_or_default().to_string(),
                text: parsed
                    .body_text(0)
                    .map(|text| text.to_string())
                    .unwrap_or_default(),
                html: parsed
                    .body_html(0)
                    .map(|html| html.to_string())
                    .unwrap_or_default(),
            });
            writer.write_all(b"250 queued\r\n").await?;
        } else if command == "QUIT" {
            writer.write_all(b"221 bye\r\n").await?;
            return Ok(());
        } else if command == "RSET" || command == "NOOP" {
            writer.write_all(b"250 OK\r\n").await?;
        } else {
            writer.write_all(b"502 not implemented\r\n").await?;
        }
    }
}
