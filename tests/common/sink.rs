//! A downstream SMTP server for relay tests: records what it accepts, can reject
//! chosen recipients, and can be started and stopped on a fixed port.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// One message as the downstream server received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub from: String,
    pub rcpts: Vec<String>,
    pub body: String,
    /// The MAIL command as sent, parameters included (no CRLF).
    pub mail_cmd: String,
}

/// A running downstream server.
pub struct Sink {
    pub addr: SocketAddr,
    pub got: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Sink {
    /// Starts on `addr` (port 0 for any); recipients whose local part starts with
    /// `nouser` get `550 5.1.1`, those starting with `later` get `451 4.3.0`, those starting
    /// with `ctrl` a 550 whose text carries ESC and a bare CR.
    pub async fn start(addr: &str) -> Sink {
        Self::start_with_delay(addr, std::time::Duration::ZERO).await
    }

    /// Like `start`, but waits `delay` before answering the end of DATA (a slow server).
    pub async fn start_with_delay(addr: &str, delay: std::time::Duration) -> Sink {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    return;
                };
                let g = g.clone();
                tokio::spawn(async move {
                    let (r, mut w) = s.into_split();
                    let mut r = BufReader::new(r);
                    let _ = w.write_all(b"220 sink.test ESMTP\r\n").await;
                    let mut from = String::new();
                    let mut mail_cmd = String::new();
                    let mut rcpts = Vec::new();
                    loop {
                        let mut line = String::new();
                        if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let up = line.to_ascii_uppercase();
                        let reply: String = if up.starts_with("EHLO") {
                            "250-sink.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n".into()
                        } else if up.starts_with("MAIL FROM:") {
                            mail_cmd = line.trim_end().to_string();
                            // The address between the brackets; parameters may follow.
                            let arg = line[10..].trim();
                            from = arg
                                .strip_prefix('<')
                                .and_then(|a| a.split_once('>'))
                                .map_or(arg, |(a, _)| a)
                                .into();
                            rcpts.clear();
                            "250 2.1.0 ok\r\n".into()
                        } else if up.starts_with("RCPT TO:") {
                            let to: String = line[8..]
                                .trim()
                                .trim_matches(|c| c == '<' || c == '>')
                                .into();
                            if to.starts_with("ctrl") {
                                // A hostile internal server: ESC and a bare CR in its text.
                                "550 5.1.1 Bad \x1b[31m\rINJ\r\n".into()
                            } else if to.starts_with("nouser") {
                                "550 5.1.1 No such user\r\n".into()
                            } else if to.starts_with("later") {
                                "451 4.3.0 Try again later\r\n".into()
                            } else {
                                rcpts.push(to);
                                "250 2.1.5 ok\r\n".into()
                            }
                        } else if up.starts_with("DATA") && rcpts.is_empty() {
                            "554 5.5.1 No valid recipients\r\n".into()
                        } else if up.starts_with("DATA") {
                            let _ = w.write_all(b"354 go ahead\r\n").await;
                            let mut body = String::new();
                            loop {
                                let mut l = String::new();
                                if r.read_line(&mut l).await.unwrap_or(0) == 0 {
                                    return;
                                }
                                if l == ".\r\n" {
                                    break;
                                }
                                body.push_str(l.strip_prefix('.').unwrap_or(&l));
                            }
                            tokio::time::sleep(delay).await;
                            g.lock().unwrap().push(Received {
                                from: from.clone(),
                                rcpts: rcpts.clone(),
                                body,
                                mail_cmd: mail_cmd.clone(),
                            });
                            "250 2.0.0 queued\r\n".into()
                        } else if up.starts_with("QUIT") {
                            let _ = w.write_all(b"221 2.0.0 bye\r\n").await;
                            return;
                        } else {
                            "250 2.0.0 ok\r\n".into()
                        };
                        if w.write_all(reply.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Sink { addr, got, task }
    }

    /// The Message-ID of each message received, in order (without the angle brackets).
    pub fn message_ids(&self) -> Vec<String> {
        self.messages()
            .iter()
            .filter_map(|m| {
                m.body.lines().find_map(|l| {
                    l.strip_prefix("Message-ID: <")
                        .map(|v| v.trim_end_matches('>').to_string())
                })
            })
            .collect()
    }

    /// Messages received so far.
    pub fn messages(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    /// Stops accepting (the port closes).
    pub fn stop(self) {
        self.task.abort();
    }
}
