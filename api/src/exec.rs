//! `kubectl exec` and `kubectl attach` through the API server: the query, the websocket
//! handshake, the channel framing of the Kubernetes streaming protocols, and the pump
//! between the websocket and the node's process (or, for attach, the container's own).
//!
//! ```text
//!  GET|POST /api/v1/namespaces/{ns}/pods/{name}/exec?command=..&stdin=..&tty=..
//!        │ ExecQuery::parse, the Pod (phase, nodeName, containers), handshake (400 on errors)
//!        ▼
//!  NodeExec::exec(target) ─► ExecStreams (stdin, stdout, stderr, exit code)
//!        │ 101 Switching Protocols, then over the upgraded connection:
//!        ▼
//!  client ── [0 stdin] [4 resize] [255 0 = stdin closed, v5] ──►  process
//!  client ◄── [1 stdout] [2 stderr] … [3 Status JSON] + websocket close ── process
//! ```
//! Every error the client must see as a Kubernetes `Status` (bad query, unknown container,
//! pod not running) is found before the upgrade, so kubectl prints it as usual. The exit code
//! travels on channel 3 as the Status kubectl decodes into "command terminated with exit
//! code N".

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http::HeaderMap;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::error::ApiError;
use crate::nodes::{flag, LogTarget};

/// The `PodExecOptions` / `PodAttachOptions`, as query parameters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecQuery {
    /// `command` repeated, one argument each.
    pub command: Vec<String>,
    pub container: Option<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

impl ExecQuery {
    /// Parses the query of an exec (`attach == false`, a command is required) or attach.
    pub fn parse(query: &str, attach: bool) -> Result<ExecQuery, ApiError> {
        let mut q = ExecQuery::default();
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            match k.as_ref() {
                "command" => q.command.push(v.into_owned()),
                "container" => q.container = Some(v.into_owned()).filter(|c| !c.is_empty()),
                "stdin" => q.stdin = flag(&v, "stdin")?,
                "stdout" => q.stdout = flag(&v, "stdout")?,
                "stderr" => q.stderr = flag(&v, "stderr")?,
                "tty" => q.tty = flag(&v, "tty")?,
                _ => {}
            }
        }
        // kube-apiserver's messages for the same mistakes.
        if !attach && q.command.is_empty() {
            return Err(ApiError::BadRequest(
                "you must specify at least one command for the container".into(),
            ));
        }
        if !(q.stdin || q.stdout || q.stderr) {
            return Err(ApiError::BadRequest(
                "you must specify at least 1 of stdin, stdout, stderr".into(),
            ));
        }
        Ok(q)
    }
}

/// Which process to start, in which container, on which node.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ExecTarget {
    /// The pod, its node and the chosen container.
    pub pod: LogTarget,
    /// The command to start; empty for `pods/attach`, which joins the container's own
    /// process (an exec always has one: [`ExecQuery::parse`] insists).
    pub command: Vec<String>,
    pub stdin: bool,
    pub tty: bool,
}

/// Where an exec goes, from the stored Pod; kube-apiserver's errors when it can't go.
pub fn exec_target(pod: &Value, q: &ExecQuery) -> Result<ExecTarget, ApiError> {
    let phase = pod["status"]["phase"].as_str().unwrap_or_default();
    if phase == "Succeeded" || phase == "Failed" {
        return Err(ApiError::BadRequest(format!(
            "cannot exec into or attach to a container in a completed pod; current phase is {phase}"
        )));
    }
    let logq = crate::nodes::LogQuery {
        container: q.container.clone(),
        ..Default::default()
    };
    Ok(ExecTarget {
        pod: crate::nodes::log_target(pod, &logq)?,
        command: q.command.clone(),
        stdin: q.stdin,
        tty: q.tty,
    })
}

/// A started process: its stdio and, once it ends, its exit code.
pub struct ExecStreams {
    /// Present when the exec asked for stdin.
    pub stdin: Option<Pin<Box<dyn AsyncWrite + Send>>>,
    pub stdout: Pin<Box<dyn AsyncRead + Send>>,
    pub stderr: Pin<Box<dyn AsyncRead + Send>>,
    /// Where the client's terminal sizes go, when the process has a terminal (`tty`).
    /// With a tty, stdout carries the terminal's output and stderr stays empty.
    pub resize: Option<tokio::sync::mpsc::Sender<TermSize>>,
    /// The exit code (128 + signal when killed), or why it could not be had. Dropping it
    /// before it resolves must stop the process: that is how a client going away ends it.
    pub exit_code: Pin<Box<dyn Future<Output = Result<i32, String>> + Send>>,
}

/// How the API server starts processes in containers on the node a pod runs on.
pub trait NodeExec: Send + Sync + 'static {
    /// Whether `target` could be started now, without starting anything. kubectl retries a
    /// failed websocket upgrade with SPDY, which is not spoken here: this is how that second
    /// request still answers with the reason the first one failed.
    fn check(
        &self,
        target: &ExecTarget,
    ) -> Pin<Box<dyn Future<Output = Result<(), ApiError>> + Send + '_>>;
    /// Starts `target.command`; errors are already the Status to answer with.
    fn exec(
        &self,
        target: ExecTarget,
    ) -> Pin<Box<dyn Future<Output = Result<ExecStreams, ApiError>> + Send + '_>>;
}

/// The streaming subprotocols spoken here, best first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// v4 plus a "stream closed" message (255), so stdin can end.
    V5,
    /// Binary channels with a JSON Status on the error channel.
    V4,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::V5 => "v5.channel.k8s.io",
            Protocol::V4 => "v4.channel.k8s.io",
        }
    }

    /// The best protocol among those offered in `Sec-WebSocket-Protocol` header values.
    pub fn choose<'a>(offered: impl IntoIterator<Item = &'a str>) -> Option<Protocol> {
        let offered: Vec<&str> = offered
            .into_iter()
            .flat_map(|h| h.split(','))
            .map(str::trim)
            .collect();
        [Protocol::V5, Protocol::V4]
            .into_iter()
            .find(|p| offered.contains(&p.as_str()))
    }
}

pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const ERROR: u8 = 3;
pub const RESIZE: u8 = 4;
/// v5: `[255, channel]` says the sender closed that channel.
pub const CLOSE: u8 = 255;

/// A terminal size, as kubectl sends it on the resize channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TermSize {
    #[serde(rename = "Width")]
    pub width: u16,
    #[serde(rename = "Height")]
    pub height: u16,
}

/// What one binary message from the client means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientFrame {
    Stdin(Bytes),
    /// The client has no more stdin (v5 only).
    CloseStdin,
    Resize(TermSize),
    /// Empty messages, and closes of channels a client never writes.
    Nothing,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("unknown channel {0}")]
    UnknownChannel(u8),
    #[error("malformed close message of {0} bytes")]
    BadClose(usize),
    #[error("malformed resize message: {0}")]
    BadResize(String),
}

/// Decodes one binary message the client sent.
pub fn decode(proto: Protocol, msg: &[u8]) -> Result<ClientFrame, FrameError> {
    let Some((&channel, data)) = msg.split_first() else {
        return Ok(ClientFrame::Nothing);
    };
    match channel {
        STDIN if data.is_empty() => Ok(ClientFrame::Nothing),
        STDIN => Ok(ClientFrame::Stdin(Bytes::copy_from_slice(data))),
        RESIZE => serde_json::from_slice(data)
            .map(ClientFrame::Resize)
            .map_err(|e| FrameError::BadResize(e.to_string())),
        CLOSE if proto == Protocol::V5 => match data {
            [STDIN] => Ok(ClientFrame::CloseStdin),
            [_] => Ok(ClientFrame::Nothing),
            _ => Err(FrameError::BadClose(msg.len())),
        },
        c => Err(FrameError::UnknownChannel(c)),
    }
}

/// One message on `channel`.
pub fn encode(channel: u8, data: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(data.len() + 1);
    out.push(channel);
    out.extend_from_slice(data);
    out.into()
}

/// The Status that ends every exec on the error channel: Success, or the exit code the way
/// kubectl turns it into its own exit code.
pub fn exit_status(code: i32, command: &[String]) -> Value {
    if code == 0 {
        return json!({"metadata": {}, "status": "Success"});
    }
    json!({
        "metadata": {},
        "status": "Failure",
        "message": format!(
            "command terminated with non-zero exit code: error executing command [{}], exit code {code}",
            command.join(" ")
        ),
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
    })
}

fn failure_status(message: &str) -> Value {
    json!({
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": "InternalError",
        "code": 500,
    })
}

/// Checks the websocket upgrade request; returns the protocol to speak and the
/// `Sec-WebSocket-Accept` value.
pub fn handshake(headers: &HeaderMap) -> Result<(Protocol, String), ApiError> {
    let has = |name: http::header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if !has(http::header::UPGRADE, "websocket") || !has(http::header::CONNECTION, "upgrade") {
        // kubectl before 1.30 (and its fallback) asks for SPDY, which is not spoken here.
        return Err(ApiError::BadRequest(
            "exec needs a websocket upgrade (v5.channel.k8s.io or v4.channel.k8s.io); \
             SPDY is not supported, use kubectl 1.30 or newer"
                .into(),
        ));
    }
    let offered = headers
        .get_all(http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok());
    let proto = Protocol::choose(offered).ok_or_else(|| {
        ApiError::BadRequest(
            "no supported websocket subprotocol: want v5.channel.k8s.io or v4.channel.k8s.io"
                .into(),
        )
    })?;
    let key = headers
        .get(http::header::SEC_WEBSOCKET_KEY)
        .ok_or_else(|| ApiError::BadRequest("missing Sec-WebSocket-Key".into()))?;
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    Ok((proto, accept))
}

/// Copies the process's `out` to `channel` until it ends; with `send == false` the bytes are
/// read and dropped so the process never blocks on a full pipe.
async fn copy_out(
    mut out: Pin<Box<dyn AsyncRead + Send>>,
    channel: u8,
    send: bool,
    tx: &tokio::sync::mpsc::Sender<Message>,
) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match out.read(&mut buf).await {
            Ok(0) => return,
            Ok(n) if send => {
                if tx
                    .send(Message::Binary(encode(channel, &buf[..n])))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(error = %e, channel, "exec output");
                return;
            }
        }
    }
}

/// Reads the client's messages until it closes: stdin goes to the process; a resize or a
/// stdin close is applied. Returns when the client is gone.
async fn read_input<S>(
    mut source: futures::stream::SplitStream<WebSocketStream<S>>,
    mut stdin: Option<Pin<Box<dyn AsyncWrite + Send>>>,
    resize: Option<tokio::sync::mpsc::Sender<TermSize>>,
    proto: Protocol,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    while let Some(msg) = source.next().await {
        let data = match msg {
            Ok(Message::Binary(b)) => b,
            Ok(Message::Close(_)) | Err(_) => return,
            // Pings are answered by the websocket layer; text is not part of v4/v5.
            Ok(_) => continue,
        };
        match decode(proto, &data) {
            Ok(ClientFrame::Stdin(bytes)) => {
                if let Some(w) = stdin.as_mut() {
                    if w.write_all(&bytes).await.is_err() || w.flush().await.is_err() {
                        // The process closed its stdin; later input has nowhere to go.
                        stdin = None;
                    }
                }
            }
            Ok(ClientFrame::CloseStdin) => {
                if let Some(mut w) = stdin.take() {
                    let _ = w.shutdown().await;
                }
            }
            Ok(ClientFrame::Resize(size)) => {
                // Sizes only matter to a terminal; a full queue means newer sizes follow.
                if let Some(r) = &resize {
                    let _ = r.try_send(size);
                }
            }
            // Without a terminal there is nothing to resize.
            Ok(ClientFrame::Nothing) => {}
            Err(e) => tracing::debug!(error = %e, "exec input"),
        }
    }
}

/// Takes over `req`'s connection for an exec session: checks the websocket handshake,
/// answers `101 Switching Protocols`, and once hyper hands the connection over, runs
/// [`pump`] with `streams` on it. `streams` is opened by `open` only after the handshake
/// was found valid, so a bad request starts no process.
pub async fn accept_upgrade<B, F>(
    req: &mut http::Request<B>,
    q: ExecQuery,
    open: F,
) -> Result<http::Response<crate::server::Body>, ApiError>
where
    F: Future<Output = Result<ExecStreams, ApiError>>,
{
    let (proto, accept) = handshake(req.headers())?;
    let on_upgrade = req
        .extensions_mut()
        .remove::<hyper::upgrade::OnUpgrade>()
        .ok_or_else(|| ApiError::BadRequest("this connection can not be upgraded".into()))?;
    let streams = open.await?;
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let ws = WebSocketStream::from_raw_socket(
                    hyper_util::rt::TokioIo::new(upgraded),
                    tokio_tungstenite::tungstenite::protocol::Role::Server,
                    None,
                )
                .await;
                pump(ws, proto, streams, &q).await;
            }
            Err(e) => tracing::debug!(error = %e, "exec upgrade failed"),
        }
    });
    use http::{header, HeaderValue};
    use http_body_util::BodyExt;
    let body = http_body_util::Full::new(Bytes::new())
        .map_err(|never| match never {})
        .boxed();
    let mut resp = http::Response::new(body);
    *resp.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(proto.as_str()),
    );
    h.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept).map_err(|e| ApiError::Internal(e.to_string()))?,
    );
    Ok(resp)
}

/// Runs one exec session over an accepted websocket until the process ends (then the exit
/// Status is sent and the websocket closed) or the client goes away (then the streams are
/// dropped, which stops the process).
pub async fn pump<S>(ws: WebSocketStream<S>, proto: Protocol, streams: ExecStreams, q: &ExecQuery)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, source) = ws.split();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Message>(16);
    let writer = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            let close = matches!(m, Message::Close(_));
            if sink.send(m).await.is_err() || close {
                break;
            }
        }
    });
    let ExecStreams {
        stdin,
        stdout,
        stderr,
        resize,
        exit_code,
    } = streams;
    let mut input = tokio::spawn(read_input(source, stdin, resize, proto));
    // As the kubelet: an empty message on the first output channel tells the client the
    // streams are ready.
    let first = if q.stdout {
        STDOUT
    } else if q.stderr {
        STDERR
    } else {
        ERROR
    };
    let _ = tx.send(Message::Binary(encode(first, &[]))).await;
    let run = async {
        let (_, _, code) = tokio::join!(
            copy_out(stdout, STDOUT, q.stdout, &tx),
            copy_out(stderr, STDERR, q.stderr, &tx),
            exit_code
        );
        code
    };
    tokio::select! {
        code = run => {
            let status = match code {
                Ok(code) => exit_status(code, &q.command),
                Err(e) => failure_status(&e),
            };
            let body = serde_json::to_vec(&status).unwrap_or_default();
            let _ = tx.send(Message::Binary(encode(ERROR, &body))).await;
            let _ = tx
                .send(Message::Close(Some(CloseFrame {
                    code: CloseCode::Normal,
                    reason: "".into(),
                })))
                .await;
            drop(tx);
            let _ = writer.await;
            // Wait briefly for the client's close reply so the connection ends cleanly.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), &mut input).await;
            input.abort();
        }
        _ = &mut input => {
            tracing::debug!("exec client went away");
            drop(tx);
            writer.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_table() {
        let cases: Vec<(&str, bool, Result<ExecQuery, &str>)> = vec![
            (
                "command=echo&command=hi&container=web&stdout=true&stderr=true",
                false,
                Ok(ExecQuery {
                    command: vec!["echo".into(), "hi".into()],
                    container: Some("web".into()),
                    stdout: true,
                    stderr: true,
                    ..Default::default()
                }),
            ),
            (
                "command=sh&command=-c&command=exit%203&stdin=true&tty=true&stdout=1",
                false,
                Ok(ExecQuery {
                    command: vec!["sh".into(), "-c".into(), "exit 3".into()],
                    stdin: true,
                    stdout: true,
                    tty: true,
                    ..Default::default()
                }),
            ),
            (
                "stdout=true&container=",
                true,
                Ok(ExecQuery {
                    stdout: true,
                    ..Default::default()
                }),
            ),
            (
                "stdout=true",
                false,
                Err("you must specify at least one command for the container"),
            ),
            (
                "command=ls&stdout=false",
                false,
                Err("you must specify at least 1 of stdin, stdout, stderr"),
            ),
            (
                "command=ls&tty=maybe",
                false,
                Err("invalid value \"maybe\" for tty"),
            ),
        ];
        for (query, attach, want) in cases {
            match (ExecQuery::parse(query, attach), want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{query}"),
                (Err(ApiError::BadRequest(m)), Err(want)) => assert_eq!(m, want, "{query}"),
                (got, want) => panic!("{query}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn protocol_choice_table() {
        let cases: Vec<(Vec<&str>, Option<Protocol>)> = vec![
            (
                vec!["v5.channel.k8s.io, v4.channel.k8s.io, v3.channel.k8s.io"],
                Some(Protocol::V5),
            ),
            (
                vec!["v4.channel.k8s.io", "v5.channel.k8s.io"],
                Some(Protocol::V5),
            ),
            (
                vec!["v4.channel.k8s.io,v3.channel.k8s.io"],
                Some(Protocol::V4),
            ),
            (vec!["v3.channel.k8s.io, channel.k8s.io"], None),
            (vec![], None),
        ];
        for (offered, want) in cases {
            assert_eq!(Protocol::choose(offered.clone()), want, "{offered:?}");
        }
    }

    #[test]
    fn decode_table() {
        use ClientFrame::*;
        let cases: Vec<(Protocol, &[u8], Result<ClientFrame, FrameError>)> = vec![
            (
                Protocol::V5,
                b"\x00hello",
                Ok(Stdin(Bytes::from_static(b"hello"))),
            ),
            (Protocol::V4, b"\x00x", Ok(Stdin(Bytes::from_static(b"x")))),
            (Protocol::V5, b"\x00", Ok(Nothing)),
            (Protocol::V5, b"", Ok(Nothing)),
            (Protocol::V5, &[255, 0], Ok(CloseStdin)),
            (Protocol::V5, &[255, 4], Ok(Nothing)),
            (Protocol::V5, &[255, 0, 1], Err(FrameError::BadClose(3))),
            (
                Protocol::V4,
                &[255, 0],
                Err(FrameError::UnknownChannel(255)),
            ),
            (
                Protocol::V5,
                b"\x04{\"Width\":80,\"Height\":24}",
                Ok(Resize(TermSize {
                    width: 80,
                    height: 24,
                })),
            ),
            (Protocol::V4, &[1, b'x'], Err(FrameError::UnknownChannel(1))),
        ];
        for (proto, msg, want) in cases {
            assert_eq!(decode(proto, msg), want, "{msg:?}");
        }
        assert!(matches!(
            decode(Protocol::V5, b"\x04{\"Width\":-1}"),
            Err(FrameError::BadResize(_))
        ));
    }

    #[test]
    fn encode_and_exit_status() {
        assert_eq!(&encode(STDOUT, b"hi\n")[..], b"\x01hi\n");
        assert_eq!(&encode(STDERR, b"")[..], b"\x02");
        assert_eq!(
            exit_status(0, &["true".into()]),
            json!({"metadata": {}, "status": "Success"})
        );
        let failed = exit_status(3, &["sh".into(), "-c".into(), "exit 3".into()]);
        assert_eq!(failed["status"], "Failure");
        assert_eq!(failed["reason"], "NonZeroExitCode");
        assert_eq!(
            failed["details"]["causes"],
            json!([{"reason": "ExitCode", "message": "3"}])
        );
        assert_eq!(
            failed["message"],
            "command terminated with non-zero exit code: error executing command [sh -c exit 3], exit code 3"
        );
    }

    #[test]
    fn handshake_table() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.append(*k, http::HeaderValue::from_static(v));
            }
            h
        };
        let ws = [
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-version", "13"),
            // RFC 6455's example key and its accept value.
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ];
        let mut ok = headers(&ws);
        ok.append(
            "sec-websocket-protocol",
            http::HeaderValue::from_static("v4.channel.k8s.io, v5.channel.k8s.io"),
        );
        assert_eq!(
            handshake(&ok).unwrap(),
            (Protocol::V5, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".to_string())
        );
        let spdy = headers(&[("connection", "Upgrade"), ("upgrade", "SPDY/3.1")]);
        let no_proto = headers(&ws);
        for (h, want) in [(spdy, "SPDY is not supported"), (no_proto, "subprotocol")] {
            match handshake(&h) {
                Err(ApiError::BadRequest(m)) => assert!(m.contains(want), "{m}"),
                other => panic!("want {want}, got {other:?}"),
            }
        }
    }

    /// The next binary message, or None at the websocket close.
    async fn next<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>) -> Option<Bytes> {
        loop {
            match ws.next().await.expect("message").expect("websocket") {
                Message::Binary(b) => return Some(b),
                Message::Close(_) => return None,
                _ => continue,
            }
        }
    }

    /// One whole session over an in-memory connection: stdin reaches the process and is
    /// closed by the v5 close message, output comes back on its channels, then the exit
    /// Status and a websocket close.
    #[tokio::test]
    async fn pump_session() {
        use tokio_tungstenite::tungstenite::protocol::Role;
        let (server_io, client_io) = tokio::io::duplex(64 * 1024);
        let (stdin_w, mut stdin_r) = tokio::io::duplex(1024);
        let (mut stdout_w, stdout_r) = tokio::io::duplex(1024);
        let (stderr_w, stderr_r) = tokio::io::duplex(1024);
        let (exit_tx, exit_rx) = tokio::sync::oneshot::channel::<i32>();
        let (resize_tx, mut resize_rx) = tokio::sync::mpsc::channel::<TermSize>(4);
        let streams = ExecStreams {
            stdin: Some(Box::pin(stdin_w)),
            stdout: Box::pin(stdout_r),
            stderr: Box::pin(stderr_r),
            resize: Some(resize_tx),
            exit_code: Box::pin(async move { exit_rx.await.map_err(|e| e.to_string()) }),
        };
        let q = ExecQuery {
            command: vec!["cat".into()],
            stdin: true,
            stdout: true,
            stderr: true,
            ..Default::default()
        };
        let server = tokio::spawn(async move {
            let ws = WebSocketStream::from_raw_socket(server_io, Role::Server, None).await;
            pump(ws, Protocol::V5, streams, &q).await;
        });
        let mut client = WebSocketStream::from_raw_socket(client_io, Role::Client, None).await;
        assert_eq!(next(&mut client).await.as_deref(), Some(&[STDOUT][..]));

        client
            .send(Message::Binary(encode(
                RESIZE,
                br#"{"Width":100,"Height":30}"#,
            )))
            .await
            .unwrap();
        assert_eq!(
            resize_rx.recv().await,
            Some(TermSize {
                width: 100,
                height: 30
            }),
            "a resize reaches the process's terminal"
        );
        client
            .send(Message::Binary(encode(STDIN, b"abc")))
            .await
            .unwrap();
        client
            .send(Message::Binary(Bytes::from_static(&[CLOSE, STDIN])))
            .await
            .unwrap();
        let mut got = Vec::new();
        stdin_r.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"abc", "stdin, then its end");

        stdout_w.write_all(b"hello").await.unwrap();
        assert_eq!(next(&mut client).await.as_deref(), Some(&b"\x01hello"[..]));
        drop(stdout_w);
        drop(stderr_w);
        exit_tx.send(3).unwrap();
        let status = next(&mut client).await.expect("the error channel");
        assert_eq!(status[0], ERROR);
        let status: Value = serde_json::from_slice(&status[1..]).unwrap();
        assert_eq!(status, exit_status(3, &["cat".into()]));
        assert_eq!(next(&mut client).await, None, "then a websocket close");
        drop(client);
        server.await.unwrap();
    }

    /// A client that goes away ends the session and drops the process's streams (which is
    /// what stops the process) although the process has not exited.
    #[tokio::test]
    async fn pump_ends_when_the_client_goes_away() {
        use tokio_tungstenite::tungstenite::protocol::Role;
        let (server_io, client_io) = tokio::io::duplex(64 * 1024);
        let (_stdout_w, stdout_r) = tokio::io::duplex(1024);
        let (_stderr_w, stderr_r) = tokio::io::duplex(1024);
        let (dropped_tx, dropped_rx) = tokio::sync::oneshot::channel::<()>();
        struct OnDrop(Option<tokio::sync::oneshot::Sender<()>>);
        impl Drop for OnDrop {
            fn drop(&mut self) {
                let _ = self.0.take().map(|tx| tx.send(()));
            }
        }
        let guard = OnDrop(Some(dropped_tx));
        let streams = ExecStreams {
            stdin: None,
            stdout: Box::pin(stdout_r),
            stderr: Box::pin(stderr_r),
            resize: None,
            exit_code: Box::pin(async move {
                let _guard = guard;
                std::future::pending::<Result<i32, String>>().await
            }),
        };
        let q = ExecQuery {
            command: vec!["sleep".into()],
            stdout: true,
            ..Default::default()
        };
        let server = tokio::spawn(async move {
            let ws = WebSocketStream::from_raw_socket(server_io, Role::Server, None).await;
            pump(ws, Protocol::V4, streams, &q).await;
        });
        let mut client = WebSocketStream::from_raw_socket(client_io, Role::Client, None).await;
        assert_eq!(next(&mut client).await.as_deref(), Some(&[STDOUT][..]));
        drop(client);
        tokio::time::timeout(std::time::Duration::from_secs(5), server)
            .await
            .expect("the pump ends")
            .unwrap();
        dropped_rx.await.expect("the exit future was dropped");
    }

    #[test]
    fn target_table() {
        let pod = |phase: &str| {
            json!({
                "metadata": {"name": "p", "namespace": "ns", "uid": "u"},
                "spec": {"nodeName": "n1", "containers": [{"name": "a"}, {"name": "b"}]},
                "status": {"phase": phase},
            })
        };
        let q = ExecQuery {
            command: vec!["ls".into()],
            container: Some("b".into()),
            stdout: true,
            ..Default::default()
        };
        let t = exec_target(&pod("Running"), &q).unwrap();
        assert_eq!(
            (
                t.pod.node.as_str(),
                t.pod.container.as_str(),
                t.pod.uid.as_str()
            ),
            ("n1", "b", "u")
        );
        assert_eq!(t.command, vec!["ls".to_string()]);
        let cases: Vec<(Value, Option<&str>, &str)> = vec![
            (
                pod("Succeeded"),
                Some("a"),
                "cannot exec into or attach to a container in a completed pod; current phase is Succeeded",
            ),
            (pod("Running"), Some("zz"), "container zz is not valid for pod p"),
            (
                pod("Running"),
                None,
                "a container name must be specified for pod p, choose one of: [a b]",
            ),
        ];
        for (p, container, want) in cases {
            let q = ExecQuery {
                container: container.map(str::to_string),
                ..q.clone()
            };
            match exec_target(&p, &q) {
                Err(ApiError::BadRequest(m)) => assert_eq!(m, want),
                other => panic!("want {want}, got {other:?}"),
            }
        }
    }
}
