//! Log output: stderr or a file that is reopened on SIGHUP (so logrotate
//! can move it away), as text or JSON lines.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use tracing_subscriber::EnvFilter;

/// A log file shared by every writer; [`LogFile::reopen`] swaps the handle.
#[derive(Clone, Debug)]
pub struct LogFile {
    path: PathBuf,
    file: Arc<Mutex<File>>,
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
            file: Arc::new(Mutex::new(open(path)?)),
        })
    }

    /// Reopens the file at its path (after logrotate renamed it).
    ///
    /// # Errors
    /// The OS error; logging goes on to the old handle.
    pub fn reopen(&self) -> io::Result<()> {
        let f = open(&self.path)?;
        *self.file.lock().unwrap_or_else(|e| e.into_inner()) = f;
        Ok(())
    }
}

impl Write for LogFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.lock().unwrap_or_else(|e| e.into_inner()).flush()
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
