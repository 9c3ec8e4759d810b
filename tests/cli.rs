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

/// `run` as a service manager runs it: JSON logs, one object per line, and a
/// clean exit 0 on SIGTERM. The station password appears nowhere in the log.
#[cfg(unix)]
#[test]
fn run_logs_json_and_stops_cleanly_on_sigterm() {
    use std::io::Read;
    use std::time::{Duration, Instant};

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let password = "s3cret-Pa55word-for-the-log-test";
    let mut sim = bin()
        .args([
            "simulate",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--tags",
            "50",
        ])
        .args([
            "--auth",
            "session",
            "--user",
            &format!("gateway:{password}"),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "gw.toml",
        &format!(
            r#"
[wincc]
base_url = "http://127.0.0.1:{port}"
auth = "session"
username = "gateway"
password_env = "TEST_WINCC_PASSWORD"
[[poll_group]]
name = "all"
interval_ms = 100
tags = ["**"]
[mqtt]
enabled = false
[opcua]
enabled = false
[http]
listen = "127.0.0.1:0"
[log]
format = "json"
level = "debug"
"#
        ),
    );
    let log_path = dir.path().join("gw.log");
    let mut gw = bin()
        .arg("run")
        .arg("-c")
        .arg(&cfg)
        .env("TEST_WINCC_PASSWORD", password)
        .env_remove("RUST_LOG")
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    // Wait until it has polled (the log says so), then stop it.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        if log.contains("station") && log.lines().count() >= 5 {
            break;
        }
        assert!(Instant::now() < deadline, "no log lines from run:\n{log}");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    let pid = gw.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = gw.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "run did not stop within 10 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = sim.kill();
    let _ = sim.wait();
    let mut log = String::new();
    std::fs::File::open(&log_path)
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert!(status.success(), "exit {status:?}\n{log}");
    for line in log.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            v.get("level").is_some() && v.get("timestamp").is_some(),
            "{line}"
        );
    }
    assert!(log.contains("stopped"), "{log}");
    assert!(!log.contains(password), "the password is in the log");
}

/// `simulate --tls` prints the fingerprint a user pins; `browse` over the
/// pinned HTTPS connection lists tags in both output formats (wincc-v7).
#[test]
fn browse_a_pinned_https_wincc_v7_station() {
    use std::io::{BufRead, BufReader};

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut sim = bin()
        .args([
            "simulate",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--tags",
            "60",
        ])
        .args(["--dialect", "wincc-v7", "--tls", "--user", "gateway:pw-123"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(sim.stdout.take().unwrap()).lines();
    let fingerprint = loop {
        let line = lines.next().expect("simulator output").unwrap();
        if let Some(rest) = line.strip_prefix("pinned_cert_sha256 = ") {
            break rest.trim_matches('"').to_string();
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg = |pin: &str| {
        write(
            dir.path(),
            "v7.toml",
            &format!(
                r#"
[wincc]
base_url = "https://127.0.0.1:{port}/WinCCRestService"
dialect = "wincc-v7"
auth = "basic"
username = "gateway"
password_env = "TEST_V7_PASSWORD"
pinned_cert_sha256 = "{pin}"
[[poll_group]]
name = "a"
tags = ["**"]
[mqtt]
enabled = false
[opcua]
enabled = false
"#
            ),
        )
    };
    let browse = |path: &Path, json: bool| {
        let mut c = bin();
        c.arg("browse")
            .arg("-c")
            .arg(path)
            .args(["--filter", "Line1/Mixer/*"]);
        if json {
            c.arg("--json");
        }
        c.env("TEST_V7_PASSWORD", "pw-123").output().unwrap()
    };
    let path = cfg(&fingerprint.to_lowercase());
    let out = browse(&path, false);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.is_empty());
    for line in text.lines() {
        let cols: Vec<&str> = line.split('\t').collect();
        assert_eq!(cols.len(), 3, "{line}");
        assert!(
            cols[0].starts_with("Line1/Mixer/") && !cols[0]["Line1/Mixer/".len()..].contains('/'),
            "{line}"
        );
        assert!(cols[2] == "rw" || cols[2] == "ro", "{line}");
    }
    let out = browse(&path, true);
    let arr: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(arr.as_array().unwrap().len(), text.lines().count());
    assert!(arr[0].get("writable").is_some() && arr[0].get("type").is_some());

    // Any other certificate fingerprint is refused, with both fingerprints named.
    let out = browse(&cfg(&"00".repeat(32)), false);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("pinned_cert_sha256"), "{err}");
    let _ = sim.kill();
    let _ = sim.wait();
}

#[test]
fn dialects_refuse_auth_modes_they_do_not_speak() {
    let dir = tempfile::tempdir().unwrap();
    for (dialect, auth) in [("wincc-v7", "session"), ("unified", "basic")] {
        let path = write(
            dir.path(),
            "d.toml",
            &format!(
                "[wincc]\nbase_url = \"https://127.0.0.1:1\"\ndialect = \"{dialect}\"\nauth = \"{auth}\"\nusername = \"u\"\n[[poll_group]]\nname = \"a\"\ntags = [\"**\"]\n[opcua]\nenabled = false\n"
            ),
        );
        let out = check_config(&path, &[]);
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&format!("wincc.auth = \"{auth}\"")), "{err}");
    }
}

#[test]
fn simulator_config_is_valid_as_shipped_without_any_environment() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/simulator.toml");
    let mut cmd = bin();
    cmd.arg("check-config").arg("-c").arg(&path);
    for (k, _) in std::env::vars() {
        if k.starts_with("WINCC_GW__") || k.ends_with("_PASSWORD") {
            cmd.env_remove(k);
        }
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A wrong enum value lists the accepted ones, with no Rust type names or
/// serde wording, whether it comes from the file or the environment.
#[test]
fn wrong_enum_values_list_the_valid_ones() {
    let dir = tempfile::tempdir().unwrap();
    let base = r#"
[wincc]
base_url = "http://127.0.0.1:8080"
auth = "none"
[[poll_group]]
name = "a"
tags = ["**"]
"#;
    for (extra, env, key, valid) in [
        (
            "[mqtt]\nprotocol = \"5.0\"\n",
            None,
            "mqtt.protocol",
            "\"3.1.1\", \"5\"",
        ),
        (
            "",
            Some(("WINCC_GW__LOG__FORMAT", "xml")),
            "log.format",
            "\"human\", \"json\"",
        ),
        (
            "",
            Some(("WINCC_GW__WINCC__DIALECT", "v7")),
            "wincc.dialect",
            "\"generic\", \"wincc-v7\", \"unified\"",
        ),
    ] {
        let path = write(dir.path(), "enum.toml", &format!("{base}{extra}"));
        let env: Vec<(&str, &str)> = env.into_iter().collect();
        let out = check_config(&path, &env);
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(key), "{err}");
        assert!(err.contains(valid), "{err}");
        for internal in ["variant", "enum ", "MqttProtocol", "LogFormat", "Dialect"] {
            assert!(!err.contains(internal), "{internal} in: {err}");
        }
    }
}

/// `check-config -c a.toml -c b.toml`: both checked; a shared MQTT client
/// id, topic prefix or port is a warning, distinct ones are silent.
#[test]
fn several_configs_are_checked_together_for_clashes() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = |name: &str, client: &str, prefix: &str, opcua: u16, http: u16| {
        write(
            dir.path(),
            name,
            &format!(
                r#"
[wincc]
base_url = "http://127.0.0.1:8080"
auth = "none"
[[poll_group]]
name = "a"
tags = ["**"]
[mqtt]
client_id = "{client}"
topic_prefix = "{prefix}"
[opcua]
endpoint = "opc.tcp://0.0.0.0:{opcua}/"
namespace_uri = "urn:{name}"
[http]
listen = "127.0.0.1:{http}"
"#
            ),
        )
    };
    let a = cfg("a.toml", "gw-a", "wincc/a", 4840, 9100);
    let b = cfg("b.toml", "gw-b", "wincc/b", 4841, 9101);
    let clash = cfg("c.toml", "gw-a", "wincc/c", 4841, 9102);
    let run = |files: &[&Path]| {
        let mut cmd = bin();
        cmd.arg("check-config");
        for f in files {
            cmd.arg("-c").arg(f);
        }
        cmd.output().unwrap()
    };
    let out = run(&[&a, &b]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.matches(": ok").count(), 2, "{stdout}");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("warning"));

    let out = run(&[&a, &b, &clash]);
    assert!(out.status.success(), "clashes are warnings");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("a.toml and") && err.contains("c.toml share mqtt.client_id = \"gw-a\""),
        "{err}"
    );
    assert!(
        err.contains("b.toml and") && err.contains("both listen on port 4841"),
        "{err}"
    );

    // One invalid file: exit 2, the others still reported.
    let bad = write(dir.path(), "bad.toml", "[wincc]\n");
    let out = run(&[&a, &bad]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stdout).contains("a.toml: ok"));
}

/// `simulate` prints its base URL, auth, users (never a password given on
/// the command line) and a `[wincc]` section; that section, pasted into a
/// configuration, lets `browse` list the simulator's tags.
#[test]
fn simulate_prints_a_wincc_section_that_works() {
    use std::io::{BufRead, BufReader};
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut sim = bin()
        .args([
            "simulate",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--tags",
            "30",
        ])
        .args(["--auth", "session", "--user", "operator:pw-Secret-7"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut text = String::new();
    let mut lines = BufReader::new(sim.stdout.take().unwrap()).lines();
    while !text.contains("Press Ctrl-C") {
        let line = lines.next().expect("simulator output").unwrap();
        text.push_str(&line);
        text.push('\n');
    }
    assert!(
        text.contains(&format!("base URL:  http://127.0.0.1:{port}")),
        "{text}"
    );
    assert!(text.contains("auth:      session"), "{text}");
    assert!(text.contains("users:     operator"), "{text}");
    assert!(
        !text.contains("pw-Secret-7"),
        "a password was printed: {text}"
    );
    let snippet = &text[text.find("[wincc]").expect("a [wincc] section")..];
    let snippet = &snippet[..snippet.find("\n\n").unwrap()];
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "from-simulate.toml",
        &format!(
            "{snippet}\n[[poll_group]]\nname = \"a\"\ntags = [\"**\"]\n[mqtt]\nenabled = false\n[opcua]\nenabled = false\n[http]\nenabled = false\n"
        ),
    );
    let out = bin()
        .args(["browse", "-c"])
        .arg(&cfg)
        .env("WINCC_PASSWORD", "pw-Secret-7")
        .output()
        .unwrap();
    let _ = sim.kill();
    let _ = sim.wait();
    assert!(
        out.status.success(),
        "{snippet}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).lines().count() >= 30);
}
