//! The status page's HTML, rendered on the server from a [`Snapshot`]: the
//! whole page at `GET /`, and the live sections again every second over
//! Server-Sent Events (the page's script swaps them in). One renderer, so
//! every text from outside (tag names, values, errors, user names) is
//! escaped in one place ([`esc`]). The plots are inline SVG.

use std::fmt::Write;
use std::time::Duration;

use super::{Snapshot, HISTORY};
use crate::model::format_ts;
use crate::poll::GroupStats;

/// HTML-escapes text for element content and quoted attributes.
pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms >= 10.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{ms:.1} ms")
    }
}

/// The whole page; `filter` is the tag browser's glob as the URL gave it.
pub(crate) fn render_page(s: &Snapshot, filter: &str) -> String {
    format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>wincc-gateway status</title>
<link rel="stylesheet" href="/status.css">
</head>
<body>
<header><h1>wincc-gateway <small>{version}</small></h1><span id="live" data-live="false">connecting…</span></header>
<main>
<div id="sections">{sections}</div>
<section id="tag-browser">
<h2>Tags</h2>
<form id="tag-filter" method="get" action="/">
<label>Filter (glob) <input id="filter" name="filter" value="{filter}" placeholder="all tags; e.g. Line1/** or **/*Temp*" maxlength="200" autocomplete="off"></label>
<button type="submit">Apply</button>
</form>
<p id="tag-note" class="note"></p>
<table id="tags"><thead><tr><th>Tag</th><th>Value</th><th>Quality</th><th>Source time</th><th>Group</th></tr></thead><tbody></tbody></table>
</section>
</main>
<script src="/status.js"></script>
</body>
</html>
"#,
        version = env!("CARGO_PKG_VERSION"),
        sections = render_sections(s),
        filter = esc(filter),
    )
}

/// The live sections (everything but the tag browser).
pub(crate) fn render_sections(s: &Snapshot) -> String {
    let mut h = String::with_capacity(16 * 1024);
    station(&mut h, s);
    budget(&mut h, s);
    plots(&mut h, s);
    groups(&mut h, &s.groups);
    sinks(&mut h, s);
    alarms(&mut h, s);
    writes(&mut h, s);
    let _ = write!(
        h,
        r#"<section id="config"><h2>Configuration</h2><p>version <b id="config-version">{}</b>, loaded {} (sha256 {}); page updated <span id="updated">{}</span></p></section>"#,
        s.config.version,
        esc(&format_ts(&s.config.loaded_at)),
        esc(if s.config.sha256.is_empty() {
            "-"
        } else {
            &s.config.sha256
        }),
        esc(&format_ts(&s.at)),
    );
    h
}

fn station(h: &mut String, s: &Snapshot) {
    let st = &s.station;
    let state = match st.connected {
        None => "connecting",
        Some(false) => "disconnected",
        Some(true) if !st.failing_groups.is_empty() => "degraded",
        Some(true) => "connected",
    };
    let _ = write!(
        h,
        r#"<section id="station"><h2>Station</h2><p><span id="station-state" class="state {state}" data-state="{state}">{state}</span> since <time>{since}</time> · {url} · {tags} tags polled · {outages} outage(s)</p>"#,
        since = esc(&format_ts(&st.since)),
        url = esc(&s.station_url),
        tags = s.tags,
        outages = st.outages,
    );
    if let Some(why) = &st.why {
        let _ = write!(h, r#"<p class="error">{}</p>"#, esc(why));
    }
    for (g, why) in &st.failing_groups {
        let _ = write!(
            h,
            r#"<p class="error">poll group {}: {}</p>"#,
            esc(g),
            esc(why)
        );
    }
    h.push_str("</section>");
}

fn budget(h: &mut String, s: &Snapshot) {
    let used = if s.rps_limit > 0 {
        s.requests_per_s / s.rps_limit as f64 * 100.0
    } else {
        0.0
    };
    let _ = write!(
        h,
        r#"<section id="budget"><h2>Request budget</h2><p><b id="rps">{:.1}</b> requests/s of {} allowed (<span class="{}">{:.0}%</span>, mean of the last 10 s) · <b id="in-flight">{}</b> in flight or queued (at most {} in flight)</p><meter min="0" max="{}" value="{:.1}"></meter></section>"#,
        s.requests_per_s,
        s.rps_limit,
        if used >= 90.0 { "warn" } else { "ok" },
        used,
        s.in_flight,
        s.in_flight_limit,
        s.rps_limit,
        s.requests_per_s,
    );
}

/// One inline SVG line plot of `values` (oldest first) over [`HISTORY`] s.
fn plot(h: &mut String, id: &str, title: &str, values: &[u32]) {
    const W: f64 = 600.0;
    const H: f64 = 80.0;
    let max = values.iter().copied().max().unwrap_or(0).max(1) as f64;
    let offset = HISTORY.saturating_sub(values.len());
    let mut points = String::new();
    for (i, v) in values.iter().enumerate() {
        let x = (offset + i) as f64 * W / (HISTORY - 1) as f64;
        let y = H - (*v as f64 / max) * (H - 4.0);
        let _ = write!(points, "{x:.1},{y:.1} ");
    }
    let now = values.last().copied().unwrap_or(0);
    let _ = write!(
        h,
        r#"<figure class="plot"><figcaption>{title}: <b>{now}</b>/s now, peak {peak}/s (last 10 min)</figcaption><svg id="{id}" viewBox="0 0 {W} {H}" preserveAspectRatio="none" role="img" aria-label="{title}"><polyline points="{points}"/></svg></figure>"#,
        peak = max as u32,
    );
}

fn plots(h: &mut String, s: &Snapshot) {
    h.push_str(r#"<section id="plots"><h2>Last 10 minutes</h2>"#);
    let req: Vec<u32> = s.history.iter().map(|x| x.0).collect();
    let chg: Vec<u32> = s.history.iter().map(|x| x.1).collect();
    plot(h, "plot-requests", "Station requests", &req);
    plot(h, "plot-changes", "Changes", &chg);
    h.push_str("</section>");
}

fn groups(h: &mut String, groups: &[GroupStats]) {
    h.push_str(r#"<section id="groups"><h2>Poll groups</h2><table><thead><tr><th>Group</th><th>Mode</th><th>Tags</th><th>Interval</th><th>Last cycle</th><th>Cycles</th><th>Skipped</th><th>Failed requests</th><th>Last error</th></tr></thead><tbody>"#);
    for g in groups {
        let interval = if g.period > g.interval {
            format!("{} (slowed to {})", ms(g.interval), ms(g.period))
        } else {
            ms(g.interval)
        };
        let last = match g.last_cycle {
            Some((d, at)) => format!(
                r#"{} <small>at {}</small>"#,
                ms(d),
                esc(&at.format("%H:%M:%S").to_string())
            ),
            None => "–".into(),
        };
        let mode = if g.mode == "subscribe" {
            format!(
                "subscribe ({})",
                if g.subscribed { "up" } else { "polling" }
            )
        } else {
            g.mode.to_string()
        };
        let err = match &g.last_error {
            Some((e, at)) => format!(
                r#"<span class="error">{}</span> <small>{}</small>"#,
                esc(e),
                esc(&format_ts(at))
            ),
            None => "–".into(),
        };
        let _ = write!(
            h,
            r#"<tr data-group="{name}"><td>{name}</td><td>{mode}</td><td>{tags}</td><td>{interval}</td><td>{last}</td><td>{cycles}</td><td>{skipped}</td><td>{failed}</td><td>{err}</td></tr>"#,
            name = esc(&g.name),
            tags = g.tags,
            cycles = g.cycles,
            skipped = g.skipped,
            failed = g.failed_requests,
        );
    }
    h.push_str("</tbody></table></section>");
}

fn component(h: &mut String, name: &str, v: &serde_json::Value, extra: &str) {
    let state = v["state"].as_str().unwrap_or("unknown");
    let mut detail = String::new();
    if let Some(n) = v["sessions"].as_u64() {
        let _ = write!(detail, " · {n} session(s)");
    }
    if let Some(e) = v["error"].as_str() {
        let _ = write!(detail, r#" · <span class="error">{}</span>"#, esc(e));
    }
    let _ = write!(
        h,
        r#"<tr><td>{name}</td><td><span class="state {state}">{state}</span>{detail}</td><td>{extra}</td></tr>"#,
        state = esc(state),
    );
}

fn sinks(h: &mut String, s: &Snapshot) {
    h.push_str(r#"<section id="sinks"><h2>Sinks</h2><table><tbody>"#);
    let mqtt_extra = if s.health["mqtt"]["state"] == "disabled" {
        String::new()
    } else if s.mqtt_commands {
        "write commands subscribed".into()
    } else {
        "publish only (write_enabled = false)".into()
    };
    component(h, "MQTT", &s.health["mqtt"], &mqtt_extra);
    let opcua_extra = s.opcua_endpoint.as_deref().map(esc).unwrap_or_default();
    component(h, "OPC UA", &s.health["opcua"], &opcua_extra);
    if !s.health["sparkplug"].is_null() {
        component(h, "Sparkplug B", &s.health["sparkplug"], "");
    }
    let b = &s.health["mqtt_buffer"];
    if !b.is_null() {
        let extra = format!(
            "{} change(s), {} bytes waiting; {} replayed, {} dropped (full), {} unbuffered",
            b["entries"], b["bytes"], b["replayed"], b["dropped"], b["unbuffered"]
        );
        let mut v = b.clone();
        if v["state"] == "ok" {
            v["state"] = "up".into();
        }
        component(h, "MQTT buffer", &v, &esc(&extra));
    }
    h.push_str("</tbody></table></section>");
}

fn alarms(h: &mut String, s: &Snapshot) {
    let _ = write!(
        h,
        r#"<section id="alarms"><h2>Active alarms <small>({})</small></h2>"#,
        s.alarms.len()
    );
    if s.alarms.is_empty() {
        h.push_str("<p>none</p></section>");
        return;
    }
    h.push_str("<table><thead><tr><th>Priority</th><th>Name</th><th>Text</th><th>Class</th><th>State</th><th>Raised</th></tr></thead><tbody>");
    for a in s.alarms.iter().take(200) {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:?}</td><td>{}</td></tr>",
            a.priority,
            esc(&a.name),
            esc(&a.text),
            esc(&a.class),
            a.state,
            esc(&a.raised_at)
        );
    }
    if s.alarms.len() > 200 {
        let _ = write!(
            h,
            r#"<tr><td colspan="6">… and {} more</td></tr>"#,
            s.alarms.len() - 200
        );
    }
    h.push_str("</tbody></table></section>");
}

fn writes(h: &mut String, s: &Snapshot) {
    h.push_str(r#"<section id="writes"><h2>Last writes</h2>"#);
    if s.writes.is_empty() {
        h.push_str("<p>none since start</p></section>");
        return;
    }
    h.push_str("<table><thead><tr><th>Time</th><th>Sink</th><th>User</th><th>Tag</th><th>Value</th><th>Result</th></tr></thead><tbody>");
    for w in s.writes.iter().rev() {
        let result = match &w.error {
            Some(e) => format!(
                r#"<span class="state {r}">{r}</span> {e}"#,
                r = w.result,
                e = esc(e)
            ),
            None => format!(r#"<span class="state up">{}</span>"#, w.result),
        };
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&format_ts(&w.at)),
            w.sink,
            esc(w.user.as_deref().unwrap_or("–")),
            esc(&w.tag),
            esc(&w.value),
            result
        );
    }
    h.push_str("</tbody></table></section>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_leaves_no_markup_from_outside_text() {
        let e = esc(r#"<script>alert("x")</script>&'"#);
        assert_eq!(
            e,
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;&#39;"
        );
        assert_eq!(esc("a\u{1b}b"), "a\u{fffd}b");
    }

    #[test]
    fn a_plot_scales_to_its_peak_and_fills_from_the_right() {
        let mut h = String::new();
        plot(&mut h, "p", "Changes", &[0, 5, 10]);
        assert!(h.contains("peak 10/s"), "{h}");
        assert!(
            h.contains("600.0,4.0"),
            "newest point at the right edge: {h}"
        );
    }
}
