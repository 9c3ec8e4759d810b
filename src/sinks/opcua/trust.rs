//! Client certificate trust, made operable: a rejected client certificate
//! gets a file name without spaces or brackets and one log line naming the
//! exact file to move and where; a certificate dropped into `trusted/`
//! under any name is given the name the OPC UA stack looks up.
//!
//! async-opcua stores a rejected certificate as `pki/rejected/CN
//! [THUMBPRINT].der` and trusts a client only if `pki/trusted/` holds a file
//! of exactly that name (contract §7: moving it trusts it without a restart).
//! The watcher here scans both directories once a second:
//! - `rejected/`: a file named by the stack is renamed to `CN_THUMBPRINT.der`
//!   (letters, digits, `-`, `_`, `.` only) and logged with the command that
//!   trusts it;
//! - `trusted/`: a file whose name is not the stack's for its certificate is
//!   renamed to that name (so `mv rejected/x.der trusted/` just works, and so
//!   does a certificate exported from UaExpert and copied in).

use std::path::{Path, PathBuf};
use std::time::Duration;

use opcua::crypto::{CertificateStore, X509};
use tokio_util::sync::CancellationToken;

/// How often the PKI directories are scanned.
const SCAN_EVERY: Duration = Duration::from_secs(1);

/// Starts the watcher on the current tokio runtime until `stop` fires.
/// Without a runtime (a synchronous caller), nothing is watched.
pub(crate) fn watch(pki_dir: &Path, stop: CancellationToken) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let pki = pki_dir.to_path_buf();
    rt.spawn(async move {
        loop {
            let p = pki.clone();
            let _ = tokio::task::spawn_blocking(move || scan(&p)).await;
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(SCAN_EVERY) => {}
            }
        }
    });
}

/// One pass over `rejected/` and `trusted/`.
pub(crate) fn scan(pki: &Path) {
    let rejected = pki.join("rejected");
    let trusted = pki.join("trusted");
    for (path, name) in der_files(&rejected) {
        let Ok(cert) = CertificateStore::read_cert(&path) else {
            continue;
        };
        let safe = safe_name(&cert);
        if name == safe {
            continue;
        }
        let target = rejected.join(&safe);
        if std::fs::rename(&path, &target).is_err() {
            continue;
        }
        let cn = cert.common_name().unwrap_or_default();
        tracing::warn!(
            client = %cn,
            thumbprint = %cert.thumbprint().as_hex_string(),
            file = %target.display(),
            "OPC UA client certificate rejected (untrusted). To trust this client, move the file: \
             mv {} {}/ (no restart needed), then connect again",
            target.display(),
            trusted.display()
        );
    }
    for (path, name) in der_files(&trusted) {
        let Ok(cert) = CertificateStore::read_cert(&path) else {
            continue;
        };
        let wanted = CertificateStore::cert_file_name(&cert);
        if name == wanted || trusted.join(&wanted).exists() {
            continue;
        }
        let target = trusted.join(&wanted);
        if std::fs::rename(&path, &target).is_ok() {
            tracing::info!(
                client = %cert.common_name().unwrap_or_default(),
                file = %target.display(),
                "OPC UA client certificate trusted (renamed to the name the OPC UA stack looks up)"
            );
        }
    }
}

/// `CN_THUMBPRINT.der` with only `[A-Za-z0-9._-]` (`THUMBPRINT.der` without a CN).
pub(crate) fn safe_name(cert: &X509) -> String {
    let cn: String = cert
        .common_name()
        .unwrap_or_default()
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let cn = cn.trim_matches(['_', '.']);
    let thumb = cert.thumbprint().as_hex_string();
    if cn.is_empty() {
        format!("{thumb}.der")
    } else {
        format!("{cn}_{thumb}.der")
    }
}

fn der_files(dir: &Path) -> Vec<(PathBuf, String)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            let is_file = e.file_type().ok()?.is_file();
            (is_file && name.to_ascii_lowercase().ends_with(".der")).then(|| (e.path(), name))
        })
        .collect()
}
