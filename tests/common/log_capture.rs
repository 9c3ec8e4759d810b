//! The gateway's log lines, captured for tests that check what is logged:
//! a global `tracing` subscriber (installed once per process, so such tests
//! run in a test binary of their own: `tests/audit.rs`, `tests/trust.rs`)
//! writing into one shared buffer.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

/// Every log line of this test process so far (installs the subscriber on
/// the first call).
pub fn log() -> Arc<Mutex<Vec<u8>>> {
    static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let w = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_env_filter("wincc_gateway=info")
            .with_writer(move || LogWriter(w.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("one subscriber");
        buf
    })
    .clone()
}

/// Log lines that mention `needle`.
pub fn lines_with(needle: &str) -> Vec<String> {
    let buf = log();
    let text = String::from_utf8_lossy(&buf.lock().unwrap()).into_owned();
    text.lines()
        .filter(|l| l.contains(needle))
        .map(str::to_string)
        .collect()
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
