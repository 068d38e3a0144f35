//! Log output: stderr or a file that is reopened on SIGHUP (so logrotate
//! can move it away), as text or JSON lines.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use tracing_subscriber::EnvFilter;

/// A log file shared by every writer; [`LogFile::reopen`] swaps the handle.
///
/// A line that cannot be written (a full file system: ENOSPC, EIO) is
/// dropped, never an error for the caller: the first failure of a run is
/// said once on stderr, the lines dropped are counted, and the first line
/// written again is preceded by a line saying how many were dropped.
/// Logging never stops relaying, and never floods stderr.
#[derive(Clone, Debug)]
pub struct LogFile {
    path: PathBuf,
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug)]
struct Inner {
    file: File,
    /// Lines dropped since the last successful write.
    dropped: u64,
}

static LOG_FILE: OnceLock<LogFile> = OnceLock::new();

fn open(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

impl LogFile {
    /// Opens (appending, creating) `path`.
    ///
    /// # Errors
    /// The OS error.
    pub fn open(path: &Path) -> io::Result<Self> {
        Ok(LogFile {
            path: path.to_owned(),
            inner: Arc::new(Mutex::new(Inner {
                file: open(path)?,
                dropped: 0,
            })),
        })
    }

    /// Reopens the file at its path (after logrotate renamed it).
    ///
    /// # Errors
    /// The OS error; logging goes on to the old handle.
    pub fn reopen(&self) -> io::Result<()> {
        let f = open(&self.path)?;
        self.lock().file = f;
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Write for LogFile {
    /// Writes all of `buf` (one log line) or drops it; always `Ok`.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut g = self.lock();
        if g.dropped > 0 {
            let note = format!(
                "turnd: {} log line(s) dropped: the log file could not be written\n",
                g.dropped
            );
            if g.file.write_all(note.as_bytes()).is_err() {
                g.dropped += 1;
                return Ok(buf.len());
            }
            let _ = writeln!(
                io::stderr(),
                "turnd: log file {} written again ({} line(s) dropped)",
                self.path.display(),
                g.dropped
            );
            g.dropped = 0;
        }
        if let Err(e) = g.file.write_all(buf) {
            if g.dropped == 0 {
                // Not eprintln!, which panics when stderr is gone: a panic
                // here, with the lock held, would deadlock the panic hook's
                // log line.
                let _ = writeln!(
                    io::stderr(),
                    "turnd: cannot write log file {}: {e}; log lines are dropped (and counted) until it can be written again",
                    self.path.display()
                );
            }
            g.dropped += 1;
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        let _ = self.lock().file.flush();
        Ok(())
    }
}

/// Reopens the log file, if logs go to one (SIGHUP).
pub fn reopen_log_file() -> Option<io::Result<()>> {
    LOG_FILE.get().map(LogFile::reopen)
}

/// Installs the global subscriber: level from `RUST_LOG`, else `default`;
/// JSON lines when `json`; to `file` when given, else stderr (colours only
/// on a terminal).
///
/// # Errors
/// The error opening `file`.
pub fn init(default: &str, json: bool, file: Option<&Path>) -> io::Result<()> {
    use std::io::IsTerminal;
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    match file {
        Some(path) => {
            let lf = LogFile::open(path)?;
            let _ = LOG_FILE.set(lf.clone());
            let make = move || lf.clone();
            if json {
                tracing_subscriber::fmt()
                    .json()
                    .with_env_filter(filter())
                    .with_writer(make)
                    .init();
            } else {
                tracing_subscriber::fmt()
                    .with_ansi(false)
                    .with_env_filter(filter())
                    .with_writer(make)
                    .init();
            }
        }
        None => {
            if json {
                tracing_subscriber::fmt()
                    .json()
                    .with_env_filter(filter())
                    .with_writer(io::stderr)
                    .init();
            } else {
                tracing_subscriber::fmt()
                    .with_ansi(io::stderr().is_terminal())
                    .with_env_filter(filter())
                    .with_writer(io::stderr)
                    .init();
            }
        }
    }
    Ok(())
}
