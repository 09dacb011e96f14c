//! hyper answers a request it cannot parse (a head over its buffer, more than 100 headers,
//! Content-Length values that disagree, a broken request line) itself, with a status and no
//! body, before the gateway sees a request. Those answers pass through [`JsonErrors`] on the
//! way out and leave with the gateway's JSON error body like every other refusal. The
//! gateway's own error answers always carry a body, so an error answer with
//! `content-length: 0` can only be one of hyper's.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use axum::http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::api_error::ApiError;

/// A connection whose bodiless error answers are given the JSON error body.
pub struct JsonErrors<T> {
    inner: T,
    /// A rewritten answer not yet fully written, and how much of it is.
    pending: Vec<u8>,
    written: usize,
}

impl<T> JsonErrors<T> {
    pub fn new(inner: T) -> Self {
        JsonErrors {
            inner,
            pending: Vec::new(),
            written: 0,
        }
    }
}

impl<T: AsyncWrite + Unpin> JsonErrors<T> {
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.pending.len() {
            let n =
                ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.pending.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for JsonErrors<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for JsonErrors<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_pending(cx))?;
        if let Some(answer) = with_json_body(buf) {
            self.pending = answer;
            // Written in full by the flush or shutdown that follows, or the next write.
            let _ = self.poll_pending(cx)?;
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// `written` with a JSON error body, when it is a whole bodiless error answer.
fn with_json_body(written: &[u8]) -> Option<Vec<u8>> {
    let head = written.strip_suffix(b"\r\n\r\n")?;
    let status = written
        .strip_prefix(b"HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| std::str::from_utf8(code).ok())
        .and_then(|code| code.parse::<u16>().ok())
        .and_then(|code| StatusCode::from_u16(code).ok())
        .filter(|s| s.is_client_error() || s.is_server_error())?;
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next()?;
    let headers: Vec<&str> = lines.collect();
    let bodiless = headers
        .iter()
        .any(|h| h.eq_ignore_ascii_case("content-length: 0"));
    if !bodiless {
        return None;
    }
    let body = ApiError::from_status(status, unreadable(status).to_owned())
        .body()
        .to_string();
    let mut answer = format!("{status_line}\r\n");
    for header in headers.iter().filter(|h| {
        let name = h.split(':').next().unwrap_or("").trim();
        !name.eq_ignore_ascii_case("content-length") && !name.eq_ignore_ascii_case("connection")
    }) {
        answer.push_str(header);
        answer.push_str("\r\n");
    }
    answer.push_str(&format!(
        "content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    ));
    Some(answer.into_bytes())
}

/// Why hyper refuses a request with `status`.
fn unreadable(status: StatusCode) -> &'static str {
    match status {
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => {
            "the request's head is too large to read, or has more than 100 headers"
        }
        StatusCode::URI_TOO_LONG => "the request target is too long to read",
        _ => "the request is not valid HTTP/1.1: its request line, a header, or its Content-Length (given twice with different values, say)",
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

    #[test]
    fn a_bodiless_error_answer_gets_the_json_body() {
        let bare = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\ndate: Mon, 30 Nov 2026 07:00:00 GMT\r\n\r\n";
        let answer = String::from_utf8(with_json_body(bare).unwrap()).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{head}");
        assert!(head.contains("date: Mon"), "{head}");
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["error"]["code"], "bad_request");
    }

    #[test]
    fn every_other_answer_passes_as_written() {
        for written in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"[..],
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 12\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n{}",
            b"{\"error\": {}}",
        ] {
            assert_eq!(with_json_body(written), None);
        }
    }

    #[tokio::test]
    async fn the_rewritten_answer_is_written_whole() {
        let mut connection = JsonErrors::new(Vec::new());
        let bare = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\n";
        connection.write_all(bare).await.unwrap();
        connection.flush().await.unwrap();
        let sent = String::from_utf8(connection.inner).unwrap();
        assert!(sent.ends_with("}}"), "{sent}");
        assert!(sent.contains("\"headers_too_large\""), "{sent}");
    }
}
