//! Reading a job's log files (`stdout.log`, `stderr.log` in the job dir, written by the shim):
//! the last N lines, and following new lines as they are appended.
//!
//! Lines are split on `\n`; a line longer than [`MAX_LINE`] is cut into pieces. A follower keeps
//! a partial last line until its newline arrives (or the job ends: [`LogFollower::flush`]).

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Longest line sent in one message.
pub const MAX_LINE: usize = 16 * 1024;

/// Which output a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// stdout.
    Stdout,
    /// stderr.
    Stderr,
}

/// One line of output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// Its stream.
    pub stream: Stream,
    /// Bytes, without the newline.
    pub bytes: Vec<u8>,
    /// Offset of the line's first byte in its file.
    pub offset: u64,
}

/// Splits `data` (starting at file offset `base`) into complete lines; returns them and the
/// number of bytes consumed (the rest is an incomplete last line, unless it is longer than
/// [`MAX_LINE`], which is cut).
fn split_lines(stream: Stream, data: &[u8], base: u64, lines: &mut Vec<Line>) -> usize {
    let mut start = 0;
    while start < data.len() {
        let rest = &data[start..];
        match rest.iter().position(|b| *b == b'\n') {
            Some(nl) if nl <= MAX_LINE => {
                lines.push(Line {
                    stream,
                    bytes: rest[..nl].to_vec(),
                    offset: base + start as u64,
                });
                start += nl + 1;
            }
            _ if rest.len() > MAX_LINE => {
                lines.push(Line {
                    stream,
                    bytes: rest[..MAX_LINE].to_vec(),
                    offset: base + start as u64,
                });
                start += MAX_LINE;
            }
            _ => break,
        }
    }
    start
}

/// The last `n` complete lines of a log file (a final line without newline counts too).
pub fn tail(path: &Path, stream: Stream, n: usize) -> std::io::Result<(Vec<Line>, u64)> {
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(err) => return Err(err),
    };
    let len = file.metadata()?.len();
    if n == 0 {
        return Ok((Vec::new(), len));
    }
    // Read backwards in chunks until n newlines are seen (or the start).
    let mut start = len;
    let mut newlines = 0usize;
    let chunk = 64 * 1024u64;
    let mut buf = Vec::new();
    while start > 0 && newlines <= n {
        let from = start.saturating_sub(chunk);
        let mut part = vec![0u8; (start - from) as usize];
        file.seek(SeekFrom::Start(from))?;
        file.read_exact(&mut part)?;
        newlines += part.iter().filter(|b| **b == b'\n').count();
        part.extend_from_slice(&buf);
        buf = part;
        start = from;
    }
    let mut lines = Vec::new();
    let used = split_lines(stream, &buf, start, &mut lines);
    if used < buf.len() {
        lines.push(Line {
            stream,
            bytes: buf[used..].to_vec(),
            offset: start + used as u64,
        });
    }
    // The first line may be partial when we started mid-file.
    if start > 0 && !lines.is_empty() {
        lines.remove(0);
    }
    let skip = lines.len().saturating_sub(n);
    Ok((lines.split_off(skip), len))
}

/// Follows one log file from an offset.
#[derive(Debug)]
pub struct LogFollower {
    path: PathBuf,
    stream: Stream,
    offset: u64,
    pending: Vec<u8>,
}

impl LogFollower {
    /// Follows `path` from byte `offset`.
    pub fn new(path: PathBuf, stream: Stream, offset: u64) -> Self {
        Self {
            path,
            stream,
            offset,
            pending: Vec::new(),
        }
    }

    /// The complete lines appended since the last call.
    pub fn poll(&mut self) -> std::io::Result<Vec<Line>> {
        let mut file = match std::fs::File::open(&self.path) {
            Ok(file) => file,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(err) => return Err(err),
        };
        let read_from = self.offset + self.pending.len() as u64;
        file.seek(SeekFrom::Start(read_from))?;
        let mut data = std::mem::take(&mut self.pending);
        (&mut file).take(4 << 20).read_to_end(&mut data)?;
        let mut lines = Vec::new();
        let used = split_lines(self.stream, &data, self.offset, &mut lines);
        self.offset += used as u64;
        self.pending = data[used..].to_vec();
        Ok(lines)
    }

    /// The incomplete last line, if any (call when the job has ended).
    pub fn flush(&mut self) -> Option<Line> {
        if self.pending.is_empty() {
            return None;
        }
        let line = Line {
            stream: self.stream,
            bytes: std::mem::take(&mut self.pending),
            offset: self.offset,
        };
        self.offset += line.bytes.len() as u64;
        Some(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn tail_and_follow() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stdout.log");
        let mut f = std::fs::File::create(&path).unwrap();
        for i in 0..100 {
            writeln!(f, "line {i}").unwrap();
        }
        let (lines, end) = tail(&path, Stream::Stdout, 3).unwrap();
        let text: Vec<String> = lines
            .iter()
            .map(|l| String::from_utf8_lossy(&l.bytes).into_owned())
            .collect();
        assert_eq!(text, ["line 97", "line 98", "line 99"]);
        assert_eq!(lines[0].offset, path.metadata().unwrap().len() - 24);
        let mut follower = LogFollower::new(path.clone(), Stream::Stdout, end);
        assert!(follower.poll().unwrap().is_empty());
        write!(f, "new\npart").unwrap();
        let got = follower.poll().unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].bytes, b"new");
        writeln!(f, "ial").unwrap();
        assert_eq!(follower.poll().unwrap()[0].bytes, b"partial");
        write!(f, "end").unwrap();
        assert!(follower.poll().unwrap().is_empty());
        assert_eq!(follower.flush().unwrap().bytes, b"end");
        let (all, _) = tail(&path, Stream::Stdout, 1000).unwrap();
        assert_eq!(all.len(), 103);
        assert_eq!(all[0].bytes, b"line 0");
    }

    #[test]
    fn long_lines_are_cut_and_missing_files_are_empty() {
        let mut lines = Vec::new();
        let data = vec![b'a'; MAX_LINE * 2 + 10];
        let used = split_lines(Stream::Stderr, &data, 0, &mut lines);
        assert_eq!(lines.len(), 2);
        assert_eq!(used, MAX_LINE * 2);
        let (none, len) = tail(Path::new("/nonexistent/x.log"), Stream::Stdout, 5).unwrap();
        assert!(none.is_empty() && len == 0);
    }
}
