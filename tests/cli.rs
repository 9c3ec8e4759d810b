//! The command line as users call it: the built binary, real files, exit codes.

use std::path::Path;
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_wincc-gateway"))
}

fn check_config(path: &Path, env: &[(&str, &str)]) -> Output {
    let mut cmd = bin();
    cmd.arg("check-config").arg("-c").arg(path);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run wincc-gateway")
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn reference_config_is_valid_with_its_secrets_set() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/gateway.toml");
    let out = check_config(
        &path,
        &[("WINCC_PASSWORD", "x"), ("OPCUA_OPERATOR_PASSWORD", "y")],
    );
    assert!(
        out.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok"));
}

#[test]
fn reference_config_names_the_missing_secret() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/gateway.toml");
    let mut cmd = bin();
    cmd.arg("check-config")
        .arg("-c")
        .arg(&path)
        .env_remove("WINCC_PASSWORD")
        .env("OPCUA_OPERATOR_PASSWORD", "y");
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("wincc.password_env"), "{err}");
    assert!(err.contains("WINCC_PASSWORD"), "{err}");
}

#[test]
fn every_problem_is_reported_with_key_value_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "bad.toml",
        r#"
[wincc]
base_url = "not a url"
colour = "blue"
[wincc.rate_limit]
requests_per_second = 0
[[poll_group]]
name = "empty"
tags = []
[[poll_group]]
name = "zero"
interval_ms = 0
tags = ["Line1/[x"]
[mqtt]
url = "http://broker"
[opcua]
security_policies = ["Basic999"]
"#,
    );
    let out = check_config(&path, &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "wincc.base_url = \"not a url\"",
        "wincc.colour",
        "unknown key",
        "wincc.rate_limit.requests_per_second = 0",
        "poll_group[0].tags",
        "poll_group[1].interval_ms = 0",
        "poll_group[1].tags[0] = \"Line1/[x\"",
        "mqtt.url = \"http://broker\"",
        "opcua.security_policies[0] = \"Basic999\"",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
}

#[test]
fn wrong_type_and_syntax_errors_are_located() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "t.toml",
        "[wincc]\nbase_url = \"http://127.0.0.1:1\"\ntimeout_ms = \"soon\"\n",
    );
    let out = check_config(&path, &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("wincc.timeout_ms") && err.contains("soon"),
        "{err}"
    );

    let path = write(dir.path(), "s.toml", "[wincc\nbase_url = 1\n");
    let out = check_config(&path, &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 1"), "{err}");

    let out = check_config(&dir.path().join("missing.toml"), &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"));
}

#[test]
fn environment_overrides_are_validated_too() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "ok.toml",
        "[wincc]\nbase_url = \"http://127.0.0.1:1\"\n[[poll_group]]\nname = \"a\"\ntags = [\"**\"]\n[opcua]\nenabled = false\n",
    );
    assert!(check_config(&path, &[]).status.success());
    let out = check_config(&path, &[("WINCC_GW__WINCC__RATE_LIMIT__BURST", "0")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("wincc.rate_limit.burst = 0"));
    let out = check_config(&path, &[("WINCC_GW__MQTT__QOS", "7")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("mqtt.qos = 7"));
}

#[test]
fn simulate_rejects_bad_flags_with_exit_2() {
    let out = bin()
        .args(["simulate", "--listen", "127.0.0.1:0", "--auth", "kerberos"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--auth"));
}

#[cfg(not(windows))]
#[test]
fn service_commands_say_they_are_windows_only() {
    let out = bin().args(["service", "install"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Windows"));
}
