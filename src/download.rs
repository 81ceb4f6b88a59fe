//! HTTP downloads as every downloader here does them: one agent configuration (HTTP errors are
//! statuses to look at, not transport errors), the announced length, and the body streamed into
//! a temporary file beside its target with progress and cancellation. The caller checks what it
//! needs (size, hash, status) and persists the file, or drops it (which removes it).

use std::io::{Read, Write};
use std::path::Path;

use crate::job::CancelToken;

/// An agent that returns 4xx/5xx responses instead of failing on them.
pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

/// The response's `content-length`, when given.
pub fn content_length(response: &ureq::http::Response<ureq::Body>) -> Option<u64> {
    response
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// Why streaming a body stopped.
#[derive(Debug)]
pub enum StreamError {
    /// Reading the body failed (the connection).
    Read(std::io::Error),
    /// Creating or writing the temporary file failed.
    Write(std::io::Error),
    /// The token was cancelled; the partial file is gone.
    Cancelled,
}

/// Streams `body` into a temporary file beside `target`, calling `on_chunk(bytes, done)` after
/// each chunk; returns the file (not yet synced or persisted) and the byte count.
pub fn stream_to_temp(
    body: &mut dyn Read,
    target: &Path,
    cancel: &CancelToken,
    on_chunk: &mut dyn FnMut(&[u8], u64),
) -> Result<(tempfile::NamedTempFile, u64), StreamError> {
    let mut tmp = crate::fsutil::temp_file_beside(target).map_err(StreamError::Write)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    loop {
        let n = body.read(&mut buf).map_err(StreamError::Read)?;
        if n == 0 {
            return Ok((tmp, done));
        }
        tmp.write_all(&buf[..n]).map_err(StreamError::Write)?;
        done += n as u64;
        on_chunk(&buf[..n], done);
        if cancel.is_cancelled() {
            // Dropping `tmp` removes the partial file.
            return Err(StreamError::Cancelled);
        }
    }
}
