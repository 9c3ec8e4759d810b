//! Unit tests of the settings: loading, env overrides, located problems.

use super::*;

const MIN: &str = r#"
[wincc]
base_url = "http://127.0.0.1:8080"
[[poll_group]]
name = "fast"
tags = ["**"]
[opcua]
enabled = false
"#;

fn load(text: &str, env: &[(&str, &str)]) -> Result<Settings, ConfigError> {
    Settings::from_toml_with_env(
        text,
        "test.toml",
        env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
    )
}

#[test]
fn minimal_file_gets_defaults() {
    let s = load(MIN, &[]).unwrap();
    assert_eq!(s.wincc.rate_limit.requests_per_second, 20);
    assert_eq!(s.poll_groups[0].interval_ms, 1000);
    assert_eq!(s.mqtt.qos, 1);
}

#[test]
fn env_overrides_nested_keys() {
    let s = load(
        MIN,
        &[
            ("WINCC_GW__WINCC__RATE_LIMIT__REQUESTS_PER_SECOND", "5"),
            ("WINCC_GW__MQTT__URL", "mqtt://10.0.0.1:1884"),
            ("WINCC_GW__MQTT__RETAIN", "false"),
        ],
    )
    .unwrap();
    assert_eq!(s.wincc.rate_limit.requests_per_second, 5);
    assert_eq!(s.mqtt.url, "mqtt://10.0.0.1:1884");
    assert!(!s.mqtt.retain);
}

#[test]
fn each_problem_is_located() {
    let text = r#"
[wincc]
base_url = "ftp://x"
max_tags_per_request = 0
colour = "blue"
[wincc.rate_limit]
requests_per_second = 0
[[poll_group]]
name = "a"
interval_ms = 0
tags = []
[[poll_group]]
name = "b"
tags = ["Line1/[x"]
[mqtt]
password_env = "WINCC_GW_TEST_SURELY_UNSET"
[opcua]
enabled = false
"#;
    let e = load(text, &[]).unwrap_err();
    let keys: Vec<&str> = e.problems.iter().map(|p| p.key.as_str()).collect();
    for k in [
        "wincc.colour",
        "wincc.base_url",
        "wincc.max_tags_per_request",
        "wincc.rate_limit.requests_per_second",
        "poll_group[0].interval_ms",
        "poll_group[0].tags",
        "poll_group[1].tags[0]",
        "mqtt.password_env",
    ] {
        assert!(keys.contains(&k), "missing {k} in {e}");
    }
    assert!(e.to_string().contains("WINCC_GW_TEST_SURELY_UNSET"));
}

#[test]
fn wrong_type_names_key_and_value() {
    let e = load(
        &MIN.replace(
            "[opcua]",
            "[opcua]\nmax_tags = 1\n[wincc.rate_limit]\nburst = \"lots\"",
        ),
        &[],
    )
    .unwrap_err();
    assert_eq!(e.problems[0].key, "wincc.rate_limit.burst", "{e}");
    assert!(e.to_string().contains("lots"), "{e}");
}

#[test]
fn fingerprints_parse_with_colons_and_any_case() {
    let hex = "AB".repeat(32);
    assert!(parse_fingerprint(&hex).is_some());
    let colons: Vec<String> = (0..32).map(|_| "ab".to_string()).collect();
    assert!(parse_fingerprint(&colons.join(":")).is_some());
    assert!(parse_fingerprint("abc").is_none());
}

#[test]
fn subscribe_mode_needs_unified() {
    let e = load(
        &MIN.replace("tags = [\"**\"]", "tags = [\"**\"]\nmode = \"subscribe\""),
        &[],
    )
    .unwrap_err();
    assert_eq!(e.problems[0].key, "poll_group[0].mode");
}

#[test]
fn response_topics_need_mqtt5_and_a_prefix_outside_the_gateways_topics() {
    let with = |extra: &str| {
        load(
            &format!("{MIN}[mqtt]\ntopic_prefix = \"plant/gw\"\n{extra}"),
            &[],
        )
    };
    assert!(with("protocol = \"5\"\nresponse_topic_prefix = \"replies/\"").is_ok());
    for (extra, why) in [
        (
            "protocol = \"5\"\nresponse_topic_prefix = \"plant/gw/x/\"",
            "outside",
        ),
        (
            "protocol = \"5\"\nresponse_topic_prefix = \"plant/\"",
            "outside",
        ),
        ("protocol = \"5\"\nresponse_topic_prefix = \"r/+/\"", "+ #"),
        ("response_topic_prefix = \"replies/\"", "MQTT 5"),
    ] {
        let e = with(extra).unwrap_err();
        let p = &e.problems[0];
        assert_eq!(p.key, "mqtt.response_topic_prefix", "{extra}");
        assert!(p.why.contains(why), "{extra}: {}", p.why);
    }
}

/// MIN with the OPC UA server on and `opcua_extra` in `[opcua]`; the
/// users' passwords come from `WINCC_GW_TEST_OPCUA_PW`.
fn with_opcua(opcua_extra: &str) -> Result<Settings, ConfigError> {
    std::env::set_var("WINCC_GW_TEST_OPCUA_PW", "secret");
    load(
        &MIN.replace(
            "[opcua]\nenabled = false",
            &format!("[opcua]\n{opcua_extra}"),
        ),
        &[],
    )
}

#[test]
fn opcua_roles_default_to_read_and_writes_need_a_write_user() {
    let s = with_opcua(
        "users = [{ username = \"a\", password_env = \"WINCC_GW_TEST_OPCUA_PW\" }, \
         { username = \"b\", password_env = \"WINCC_GW_TEST_OPCUA_PW\", role = \"write\" }]",
    )
    .unwrap();
    assert_eq!(s.opcua.users[0].role, OpcuaRole::Read);
    assert_eq!(s.opcua.users[1].role, OpcuaRole::Write);

    // write_enabled with nobody who may write: refused, located.
    let e = with_opcua(
        "write_enabled = true\nusers = [{ username = \"a\", password_env = \"WINCC_GW_TEST_OPCUA_PW\" }]",
    )
    .unwrap_err();
    let p = e
        .problems
        .iter()
        .find(|p| p.key == "opcua.write_enabled")
        .unwrap_or_else(|| panic!("{e}"));
    assert_eq!(p.value, "true");
    assert!(p.why.contains("nobody could write"), "{}", p.why);
    assert!(with_opcua("write_enabled = true").is_err());
    assert!(with_opcua(
        "write_enabled = true\nusers = [{ username = \"b\", password_env = \"WINCC_GW_TEST_OPCUA_PW\", role = \"write\" }]"
    )
    .is_ok());

    let e = with_opcua(
        "users = [{ username = \"a\", password_env = \"WINCC_GW_TEST_OPCUA_PW\", role = \"admin\" }]",
    )
    .unwrap_err();
    assert!(e.to_string().contains("admin"), "{e}");
}

#[test]
fn opcua_limits_are_checked() {
    let e = with_opcua("[opcua.limits]\nmax_sessions = 0\nmax_message_size = 100").unwrap_err();
    let keys: Vec<&str> = e.problems.iter().map(|p| p.key.as_str()).collect();
    assert!(keys.contains(&"opcua.limits.max_sessions"), "{e}");
    assert!(keys.contains(&"opcua.limits.max_message_size"), "{e}");
    let s = with_opcua("[opcua.limits]\nmax_monitored_items_per_session = 5000").unwrap();
    assert_eq!(s.opcua.limits.max_monitored_items_per_session, 5000);
    assert_eq!(
        with_opcua("")
            .unwrap()
            .opcua
            .limits
            .max_monitored_items_per_session,
        0,
        "0: the tag count + 1000"
    );
}

#[test]
fn opcua_min_publishing_interval_is_checked() {
    assert_eq!(with_opcua("").unwrap().opcua.min_publishing_interval_ms, 50);
    let s = with_opcua("min_publishing_interval_ms = 250").unwrap();
    assert_eq!(s.opcua.min_publishing_interval_ms, 250);
    for bad in ["0", "5", "60001"] {
        let e = with_opcua(&format!("min_publishing_interval_ms = {bad}")).unwrap_err();
        let p = e
            .problems
            .iter()
            .find(|p| p.key == "opcua.min_publishing_interval_ms")
            .unwrap_or_else(|| panic!("{e}"));
        assert_eq!(p.value, bad);
        assert!(p.why.contains("between 10 and 60000"), "{}", p.why);
    }
    assert_eq!(crate::sinks::opcua::server::subscription_tick_ms(50), 5);
    assert_eq!(crate::sinks::opcua::server::subscription_tick_ms(10), 1);
    assert_eq!(crate::sinks::opcua::server::subscription_tick_ms(1000), 10);
}

#[test]
fn credentials_in_urls_are_refused_without_echoing_the_password() {
    let e = load(
        &MIN.replace(
            "http://127.0.0.1:8080",
            "https://gateway:hunter2@scada01:34569/api",
        ),
        &[],
    )
    .unwrap_err();
    let p = &e.problems[0];
    assert_eq!(p.key, "wincc.base_url", "{e}");
    assert!(p.why.contains("user:password@"), "{}", p.why);
    assert!(!e.to_string().contains("hunter2"), "{e}");

    let e = load(
        &format!("{MIN}[mqtt]\nurl = \"mqtt://gw:hunter2@broker:1883\"\n"),
        &[],
    )
    .unwrap_err();
    assert_eq!(e.problems[0].key, "mqtt.url", "{e}");
    assert!(!e.to_string().contains("hunter2"), "{e}");
}

#[test]
fn credentials_in_clear_are_warned_about() {
    std::env::set_var("WINCC_GW_TEST_CLEAR_PW", "x");
    let s = load(
        &format!(
            "{}[mqtt]\nurl = \"mqtt://broker:1883\"\nusername = \"gw\"\npassword_env = \"WINCC_GW_TEST_CLEAR_PW\"\n",
            MIN.replace(
                "base_url = \"http://127.0.0.1:8080\"",
                "base_url = \"http://127.0.0.1:8080\"\nauth = \"basic\"\nusername = \"u\"\npassword_env = \"WINCC_GW_TEST_CLEAR_PW\""
            )
        ),
        &[],
    )
    .unwrap();
    let w = s.cleartext_warnings();
    assert_eq!(w.len(), 2, "{w:?}");
    assert!(
        w[0].contains("wincc.auth") && w[0].contains("https://"),
        "{w:?}"
    );
    assert!(
        w[1].contains("mqtt.url") && w[1].contains("mqtts://"),
        "{w:?}"
    );
    // TLS on both sides: nothing to warn about.
    let s = load(MIN, &[]).unwrap();
    assert!(s.cleartext_warnings().is_empty());
}

#[test]
fn max_tags_defaults_to_200000_and_must_be_positive() {
    assert_eq!(load(MIN, &[]).unwrap().wincc.max_tags, 200_000);
    let e = load(
        &MIN.replace("[[poll_group]]", "max_tags = 0\n[[poll_group]]"),
        &[],
    )
    .unwrap_err();
    assert_eq!(e.problems[0].key, "wincc.max_tags", "{e}");
}

#[test]
fn http_users_are_checked_with_located_problems() {
    let text = format!(
        "{MIN}\n[http]\nlisten = \"0.0.0.0:9100\"\nusers = [\n  {{ username = \"op\", password_env = \"WINCC_TEST_HTTP_PW_UNSET_1\" }},\n  {{ username = \"a:b\", password_file = \"/nonexistent/pw\" }},\n  {{ username = \"eng\" }},\n]\n"
    );
    let e = load(&text, &[]).unwrap_err();
    let keys: Vec<&str> = e.problems.iter().map(|p| p.key.as_str()).collect();
    assert!(keys.contains(&"http.users[0].password_env"), "{e}");
    assert!(keys.contains(&"http.users[1].username"), "{e}");
    assert!(keys.contains(&"http.users[1].password_file"), "{e}");
    assert!(keys.contains(&"http.users[2].password_env"), "{e}");
    let text = format!(
        "{MIN}\n[http]\nusers = [{{ username = \"op\", password_env = \"PATH\" }}, {{ username = \"op\", password_env = \"PATH\" }}]\n"
    );
    let e = load(&text, &[]).unwrap_err();
    assert_eq!(e.problems.len(), 1, "{e}");
    assert_eq!(e.problems[0].key, "http.users[1].username");
    assert!(e.problems[0].why.contains("twice"), "{e}");
    let s = load(&format!("{MIN}\n[http]\nstatus_page = false\n"), &[]).unwrap();
    assert!(!s.http.status_page && s.http.is_loopback());
}
