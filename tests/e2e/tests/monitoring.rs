//! The alert rules and the Grafana dashboard of `ops/monitoring` (also shipped by the Helm
//! chart), checked with the real tools: `promtool check rules` and `promtool test rules`
//! (`alerts_test.yml` makes each alert fire on the series it is meant for), every rule and every
//! dashboard query evaluated by a real Prometheus (Debian's 2.42, the one the metrics scrape
//! test uses) through its query API, and every `mailvault_…` name they use checked against
//! docs/telemetry.md and the services' own `/metrics` output, so they cannot drift from the
//! real names. `aggregator/tests/metrics_scrape.rs` loads the same rules into a Prometheus
//! scraping a real aggregator.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use mailvault_harness::{Prometheus, tools_bin, wait_until};
use serde_json::Value;

fn monitoring_dir() -> PathBuf {
    mailvault_harness::repo_root().join("ops/monitoring")
}

fn alerts_file() -> PathBuf {
    monitoring_dir().join("alerts.yml")
}

fn read(path: &PathBuf) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The alert names of the rules file, in order.
fn alert_names(rules: &str) -> Vec<String> {
    rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .map(str::to_owned)
        .collect()
}

fn dashboard() -> Value {
    serde_json::from_str(&read(&monitoring_dir().join("grafana/mailvault.json")))
        .expect("the dashboard is JSON")
}

/// Every panel of the dashboard, rows' nested panels included.
fn panels(d: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    let mut stack: Vec<&Value> = d["panels"].as_array().expect("panels").iter().collect();
    while let Some(p) = stack.pop() {
        stack.extend(p["panels"].as_array().into_iter().flatten());
        out.push(p);
    }
    out
}

/// (panel title, PromQL) of every query of the dashboard.
fn dashboard_queries(d: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in panels(d) {
        for t in p["targets"].as_array().into_iter().flatten() {
            out.push((
                p["title"].as_str().unwrap_or("").to_owned(),
                t["expr"]
                    .as_str()
                    .expect("every target has an expr")
                    .to_owned(),
            ));
        }
    }
    out
}

/// Grafana's built-in interval variables as Grafana would expand them; anything else left is
/// a variable Prometheus would choke on.
fn expand_grafana_variables(promql: &str) -> String {
    let expanded = promql
        .replace("$__rate_interval", "1m")
        .replace("$__interval", "15s")
        .replace("$__range", "1h");
    assert!(
        !expanded.contains('$'),
        "unexpanded Grafana variable in {promql:?}"
    );
    expanded
}

/// Every `mailvault_…` token of `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("mailvault_") {
        let preceded_by_word = rest[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        if !preceded_by_word {
            out.insert(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
    out
}

/// The metric names of docs/telemetry.md's table (without label sets).
fn documented_names() -> BTreeSet<String> {
    read(&mailvault_harness::repo_root().join("docs/telemetry.md"))
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split(['`', '{']).next())
        .filter(|n| n.starts_with("mailvault_"))
        .map(str::to_owned)
        .collect()
}

/// The names the three services really expose on `/metrics`.
fn exposed_names() -> BTreeSet<String> {
    let text = [
        mailvault_aggregator::Metrics::default().render(),
        mailvault_collector::metrics::Metrics::default().render(),
        mailvault_indexer::metrics::Metrics::default().render(),
    ]
    .join("\n");
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

fn promtool(args: &[&str]) -> (bool, String) {
    let bin = tools_bin("promtool").unwrap_or_else(|e| {
        panic!("{e}\n(promtool comes with Prometheus: ops/scripts/install-tools.sh prometheus)")
    });
    let out = Command::new(bin)
        .args(args)
        .current_dir(monitoring_dir())
        .stdin(Stdio::null())
        .output()
        .expect("running promtool");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn alert_rules_pass_promtool_check_and_unit_tests() {
    let rules = read(&alerts_file());
    let names = alert_names(&rules);
    assert!(names.len() >= 8, "{names:?}");

    let (ok, out) = promtool(&["check", "rules", "alerts.yml"]);
    assert!(ok, "promtool check rules:\n{out}");
    assert!(
        out.contains(&format!("SUCCESS: {} rules found", names.len())),
        "promtool saw a different number of rules than the {} alerts: {out}",
        names.len()
    );

    let (ok, out) = promtool(&["test", "rules", "alerts_test.yml"]);
    assert!(ok, "promtool test rules:\n{out}");
    // Every alert has a case in which it fires.
    let tests = read(&monitoring_dir().join("alerts_test.yml"));
    for name in &names {
        let fires = tests
            .split(&format!("alertname: {name}\n"))
            .skip(1)
            .any(|case| {
                case.trim_start()
                    .strip_prefix("exp_alerts:")
                    .is_some_and(|rest| rest.trim_start().starts_with("- exp_labels"))
            });
        assert!(fires, "alerts_test.yml never expects {name} to fire");
    }
}

#[test]
fn rules_and_dashboard_queries_evaluate_in_prometheus() {
    let prom = Prometheus::start_with_rules(&[], &[alerts_file()]).unwrap_or_else(|e| {
        panic!("{e}\n(Prometheus comes from ops/scripts/install-tools.sh; run it once)")
    });

    // Prometheus loaded every rule and evaluated each without an error.
    let names = alert_names(&read(&alerts_file()));
    let mut rules = Value::Null;
    let evaluated = wait_until(Duration::from_secs(15), || {
        rules = serde_json::from_str(&prom.rules_json().expect("/api/v1/rules")).expect("JSON");
        let all: Vec<&Value> = rules["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().into_iter().flatten())
            .collect();
        all.len() == names.len() && all.iter().all(|r| r["health"] != "unknown")
    });
    assert!(
        evaluated,
        "rules not all evaluated: {rules}\n{}",
        prom.output()
    );
    let loaded: Vec<&Value> = rules["data"]["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules"))
        .collect();
    let loaded_names: Vec<&str> = loaded
        .iter()
        .map(|r| r["name"].as_str().expect("name"))
        .collect();
    assert_eq!(loaded_names, names);
    for r in &loaded {
        assert_eq!(r["health"], "ok", "rule {}: {}", r["name"], r["lastError"]);
    }

    // Each query through the query API: a syntax error, an unknown function or a type error
    // (a range where an instant vector belongs) is a 400 there.
    let mut queries: Vec<(String, String)> = loaded
        .iter()
        .map(|r| {
            (
                format!("rule {}", r["name"]),
                r["query"].as_str().expect("query").to_owned(),
            )
        })
        .collect();
    let d = dashboard();
    let from_dashboard = dashboard_queries(&d);
    assert!(from_dashboard.len() >= 20, "{from_dashboard:?}");
    queries.extend(
        from_dashboard
            .into_iter()
            .map(|(title, q)| (format!("panel {title:?}"), expand_grafana_variables(&q))),
    );
    for (what, q) in &queries {
        let answer = prom
            .query_json(q)
            .unwrap_or_else(|e| panic!("{what}: Prometheus refused {q:?}: {e}"));
        assert!(
            answer.contains("\"status\":\"success\""),
            "{what}: {q:?}: {answer}"
        );
    }
    // The same path refuses what is not PromQL, so the loop above can fail.
    assert!(
        prom.query_json("rate(mailvault_aggregator_items_stored_total)")
            .is_err()
    );

    // Every panel queries the dashboard's Prometheus variable, not a data source of the
    // machine it was drawn on.
    for p in panels(&d) {
        if p["type"] != "row" {
            assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        }
    }
}

#[test]
fn rules_and_dashboard_use_only_real_metric_names() {
    let documented = documented_names();
    let exposed = exposed_names();
    assert!(documented.len() >= 30, "{documented:?}");
    // The docs table and the services agree, so either is the reference.
    assert_eq!(
        documented, exposed,
        "docs/telemetry.md's table and the services' /metrics differ"
    );

    let rules = read(&alerts_file());
    let tests = read(&monitoring_dir().join("alerts_test.yml"));
    let d = dashboard();
    let dashboard_text = dashboard_queries(&d)
        .into_iter()
        .map(|(_, q)| q)
        .collect::<Vec<_>>()
        .join("\n");
    for (file, text) in [
        ("alerts.yml", &rules),
        ("alerts_test.yml", &tests),
        ("grafana/mailvault.json", &dashboard_text),
    ] {
        let used = metric_names(text);
        assert!(!used.is_empty(), "{file} names no metric");
        let unknown: Vec<&String> = used.difference(&documented).collect();
        assert!(
            unknown.is_empty(),
            "ops/monitoring/{file} uses metrics that do not exist: {unknown:?}"
        );
    }
    // The dashboard covers each service.
    let used = metric_names(&dashboard_text);
    for component in ["aggregator", "collector", "indexer"] {
        assert!(
            used.iter()
                .any(|n| n.starts_with(&format!("mailvault_{component}_"))),
            "the dashboard shows nothing of the {component}"
        );
    }
}

#[test]
fn metric_name_scanner_finds_names_and_only_names() {
    assert_eq!(
        metric_names("rate(mailvault_a_total[1m]) / x_mailvault_b + mailvault_c{k=\"v\"}"),
        BTreeSet::from(["mailvault_a_total".to_owned(), "mailvault_c".to_owned()])
    );
}
