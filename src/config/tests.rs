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
