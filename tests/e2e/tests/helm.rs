//! The Helm chart (`helm/mailvault`), checked the way an install would see it, without a
//! cluster: Helm's own lint (`--strict`) and render through its Go SDK (PyPI
//! `helm-python-sdk`), every manifest validated with `kubernetes-validate` against
//! [`KUBE_VERSION`], and every rendered TOML config loaded by the real binaries' `--check`
//! paths (and by the crates' config types, which are always current).
//!
//! The Python tools come from `ops/scripts/install-tools.sh` (venv `$MAILVAULT_TOOLS/helm-venv`);
//! when missing, the test runs the script itself. The binaries are the ones `cargo test
//! --workspace` builds next to this test; run alone, the test builds them when they are
//! missing (a stale one from an older build is used as is — the in-process checks still see
//! the current code).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use base64::Engine as _;
use serde_json::{Value, json};

/// Kubernetes version the manifests are validated against: the chart's oldest supported one
/// (Chart.yaml `kubeVersion`) and a current one.
const KUBE_VERSIONS: [&str; 2] = ["1.27.0", "1.33.0"];
const RELEASE: &str = "mv";
const NAMESPACE: &str = "backup";
const FULLNAME: &str = "mv-mailvault";

fn repo_root() -> PathBuf {
    // At run time: a binary reused from another checkout would name that checkout.
    let dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    dir.ancestors()
        .nth(2)
        .expect("tests/e2e is two levels below the root")
        .to_path_buf()
}

fn chart_dir() -> PathBuf {
    repo_root().join("helm/mailvault")
}

/// The helm venv's python, installing it with `install-tools.sh helm` when it is missing (once
/// per process: the tests run in parallel).
fn helm_python() -> PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(find_or_install_helm_python).clone()
}

fn find_or_install_helm_python() -> PathBuf {
    let python = mailvault_harness::tools_dir()
        .parent()
        .map(|t| t.join("helm-venv/bin/python"))
        .expect("tools dir has a parent");
    let usable = |p: &Path| {
        Command::new(p)
            .args(["-c", "import helm_python, kubernetes_validate"])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if usable(&python) {
        return python;
    }
    let script = repo_root().join("ops/scripts/install-tools.sh");
    eprintln!(
        "helm test: {} is missing, running {} helm",
        python.display(),
        script.display()
    );
    let status = Command::new("bash")
        .arg(&script)
        .arg("helm")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .expect("running install-tools.sh");
    assert!(
        status.success() && usable(&python),
        "the Helm SDK and kubernetes-validate are missing: run `bash ops/scripts/install-tools.sh helm` \
         (with the same MAILVAULT_TOOLS as this test)"
    );
    python
}

#[derive(Debug)]
struct Rendered {
    /// (template path, document)
    docs: Vec<(String, Value)>,
    /// `Kind/name` → the validator that accepted it (kubernetes-validate, or the
    /// prometheus-operator CRD models for that operator's kinds).
    validated_by: BTreeMap<String, String>,
    /// NOTES.txt as rendered.
    notes: String,
}

impl Rendered {
    fn of_kind(&self, kind: &str) -> impl Iterator<Item = &Value> {
        let kind = kind.to_owned();
        self.docs
            .iter()
            .map(|(_, d)| d)
            .filter(move |d| d["kind"] == kind.as_str())
    }

    fn named(&self, kind: &str, name: &str) -> &Value {
        self.of_kind(kind)
            .find(|d| d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name} rendered"))
    }

    fn config_map_data(&self, name: &str) -> BTreeMap<String, String> {
        serde_json::from_value(self.named("ConfigMap", name)["data"].clone())
            .expect("ConfigMap data is strings")
    }

    /// Pod specs of every workload, by `Kind/name`.
    fn pod_specs(&self) -> Vec<(String, &Value)> {
        self.docs
            .iter()
            .map(|(_, d)| d)
            .filter(|d| {
                ["Deployment", "StatefulSet", "DaemonSet", "Job"]
                    .contains(&d["kind"].as_str().unwrap_or(""))
            })
            .map(|d| {
                (
                    format!(
                        "{}/{}",
                        d["kind"].as_str().unwrap_or(""),
                        d["metadata"]["name"].as_str().unwrap_or("")
                    ),
                    &d["spec"]["template"]["spec"],
                )
            })
            .collect()
    }

    /// Every value of every rendered Secret, decoded.
    fn secret_values(&self) -> Vec<String> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut out = Vec::new();
        for s in self.of_kind("Secret") {
            for v in s["data"].as_object().into_iter().flat_map(|m| m.values()) {
                let bytes = b64
                    .decode(v.as_str().expect("base64 string"))
                    .expect("base64");
                out.push(String::from_utf8(bytes).expect("utf-8 secret"));
            }
            for v in s["stringData"]
                .as_object()
                .into_iter()
                .flat_map(|m| m.values())
            {
                out.push(v.as_str().expect("string").to_owned());
            }
        }
        out
    }
}

/// The documents with the chart-made API certificate's data left out: a new key pair is made on
/// every render (an install keeps the first through `lookup`).
fn without_generated_keys(docs: &[(String, Value)]) -> Vec<(String, Value)> {
    let mut out = docs.to_vec();
    for (_, d) in &mut out {
        if d["kind"] == "Secret"
            && d["metadata"]["name"] == format!("{FULLNAME}-indexer-tls").as_str()
        {
            d["data"] = json!("<made at render time>");
        }
    }
    out
}

/// Lints, renders and validates with `values` (None: the chart's defaults); panics on any lint
/// warning, schema or render error, or invalid manifest.
fn render(values: Option<&Path>) -> Rendered {
    let python = helm_python();
    let mut first: Option<Vec<(String, Value)>> = None;
    let mut validated_by = BTreeMap::new();
    let mut notes = String::new();
    for kube in KUBE_VERSIONS {
        let out = run_render(&python, values, kube);
        let label = format!("{values:?} on Kubernetes {kube}");
        let lint = &out["lint"];
        assert_eq!(
            lint["errors"],
            json!([]),
            "helm lint --strict {label}: {lint}"
        );
        // Severity 1 is information (`icon is recommended`); strict fails on warnings (2) and
        // errors (3).
        let serious: Vec<&Value> = lint["messages"]
            .as_array()
            .expect("lint messages")
            .iter()
            .filter(|m| m["severity"].as_u64().unwrap_or(3) >= 2)
            .collect();
        assert!(
            serious.is_empty(),
            "helm lint --strict {label}: {serious:?}"
        );
        assert_eq!(
            out["schema_error"],
            Value::Null,
            "values.schema.json {label}"
        );
        assert_eq!(out["render_error"], Value::Null, "helm template {label}");
        assert_eq!(out["invalid"], json!([]), "kubernetes-validate {label}");
        let docs: Vec<(String, Value)> = out["documents"]
            .as_array()
            .expect("documents")
            .iter()
            .map(|d| {
                (
                    d["source"].as_str().expect("source").to_owned(),
                    d["doc"].clone(),
                )
            })
            .collect();
        assert!(!docs.is_empty(), "nothing rendered {label}");
        validated_by = serde_json::from_value(out["validated_by"].clone()).expect("validated_by");
        for (_, d) in &docs {
            let key = format!(
                "{}/{}",
                d["kind"].as_str().unwrap_or(""),
                d["metadata"]["name"].as_str().unwrap_or("")
            );
            assert!(
                validated_by.contains_key(&key),
                "{key} was not validated {label}"
            );
        }
        notes = out["notes"].as_str().expect("NOTES.txt").to_owned();
        match &first {
            None => first = Some(docs),
            Some(f) => assert_eq!(
                without_generated_keys(f),
                without_generated_keys(&docs),
                "rendering differs between Kubernetes versions"
            ),
        }
    }
    Rendered {
        docs: first.expect("rendered"),
        validated_by,
        notes,
    }
}

fn run_render(python: &Path, values: Option<&Path>, kube: &str) -> Value {
    let values_arg = values.map_or_else(|| "-".into(), |v| v.display().to_string());
    let out = Command::new(python)
        .arg(repo_root().join("tests/e2e/helm/render.py"))
        .arg(chart_dir())
        .arg(values_arg)
        .args([kube, RELEASE, NAMESPACE])
        .stdin(Stdio::null())
        .output()
        .expect("running render.py");
    assert!(
        out.status.success(),
        "render.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("render.py prints JSON")
}

/// Renders with `values` and returns what the schema or the templates refused.
fn render_refusal(values: &Value) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("values.yaml");
    std::fs::write(&path, values.to_string()).expect("write values");
    let out = run_render(&helm_python(), Some(&path), KUBE_VERSIONS[1]);
    [&out["schema_error"], &out["render_error"]]
        .iter()
        .filter_map(|v| v.as_str())
        .collect::<Vec<_>>()
        .join("; ")
}

fn full_values() -> PathBuf {
    chart_dir().join("ci/full-values.yaml")
}

// ---- the binaries ----------------------------------------------------------------------------

/// What a container's mounts provide: single files (path → content, "secret" for a Secret's)
/// and whole directories (path, volume kind).
#[derive(Debug, Default)]
struct Mounted {
    files: BTreeMap<String, String>,
    dirs: Vec<(String, String)>,
}

fn mounted(r: &Rendered, pod: &Value, container: &Value) -> Mounted {
    let mut m = Mounted::default();
    let volumes = pod["volumes"].as_array().expect("volumes");
    for vm in container["volumeMounts"].as_array().expect("volumeMounts") {
        let at = vm["mountPath"].as_str().expect("mountPath");
        let v = volumes
            .iter()
            .find(|v| v["name"] == vm["name"])
            .cloned()
            .unwrap_or_else(|| json!({"persistentVolumeClaim": {}}));
        if let Some(items) = v["secret"]["items"].as_array() {
            for i in items {
                m.files.insert(
                    format!("{at}/{}", i["path"].as_str().expect("path")),
                    "secret".into(),
                );
            }
        } else if v["secret"].is_object() {
            m.dirs.push((at.into(), "secret".into()));
        } else if let Some(cm) = v["configMap"]["name"].as_str() {
            for (k, text) in r.config_map_data(cm) {
                m.files.insert(format!("{at}/{k}"), text);
            }
        } else if v["emptyDir"].is_object() {
            m.dirs.push((at.into(), "emptyDir".into()));
        } else {
            m.dirs.push((at.into(), "volume".into()));
        }
    }
    m
}

/// Every path a config names (`*_file`, `mailboxes_csv`, `dir`), with its key.
fn config_paths(t: &toml::Table, prefix: &str, out: &mut Vec<(String, String)>) {
    for (k, v) in t {
        let key = format!("{prefix}{k}");
        match v {
            toml::Value::Table(sub) => config_paths(sub, &format!("{key}."), out),
            toml::Value::String(s)
                if k.ends_with("_file")
                    || k == "mailboxes_csv"
                    || k == "dir"
                    || k.starts_with("tls_") =>
            {
                out.push((key, s.clone()))
            }
            _ => {}
        }
    }
}

/// The containers of `r` that read a config, the config file, and its text.
fn configs(r: &Rendered) -> Vec<(String, Value, Value, String, String)> {
    let mut out = Vec::new();
    for d in r.docs.iter().map(|(_, d)| d) {
        if !["Deployment", "StatefulSet"].contains(&d["kind"].as_str().unwrap_or("")) {
            continue;
        }
        let pod = &d["spec"]["template"]["spec"];
        for c in pod["containers"].as_array().expect("containers") {
            let args: Vec<&str> = c["args"]
                .as_array()
                .expect("args")
                .iter()
                .filter_map(|a| a.as_str())
                .collect();
            let at = args
                .iter()
                .position(|a| *a == "--config")
                .expect("--config")
                + 1;
            let path = args[at].to_owned();
            let m = mounted(r, pod, c);
            let text = m
                .files
                .get(&path)
                .unwrap_or_else(|| panic!("{path} is not mounted in {}", d["metadata"]["name"]))
                .clone();
            out.push((
                d["metadata"]["name"].as_str().expect("name").to_owned(),
                pod.clone(),
                c.clone(),
                path,
                text,
            ));
        }
    }
    out
}

/// Checks every rendered config: each path it names is mounted, the crate's config type accepts
/// it, and the binary's own check accepts it with those files in place.
fn check_configs(r: &Rendered) -> usize {
    let mut checked = 0;
    for (workload, pod, container, _, text) in configs(r) {
        let table: toml::Table = toml::from_str(&text)
            .unwrap_or_else(|e| panic!("{workload}: rendered config is not TOML: {e}\n{text}"));
        let m = mounted(r, &pod, &container);
        let mut paths = Vec::new();
        config_paths(&table, "", &mut paths);
        for (key, p) in &paths {
            let as_file = m.files.contains_key(p);
            let in_dir = m
                .dirs
                .iter()
                .any(|(d, kind)| p.starts_with(&format!("{d}/")) && kind != "secret");
            assert!(
                as_file || in_dir,
                "{workload}: {key} = {p:?} is not provided by any volume mount: {m:?}"
            );
        }
        let command = container["command"][0].as_str().expect("command");
        // Files laid out under a temp root, the config pointing there.
        let root = tempfile::tempdir().expect("tempdir");
        let rooted = |p: &str| root.path().join(p.trim_start_matches('/'));
        for (path, content) in &m.files {
            let f = rooted(path);
            std::fs::create_dir_all(f.parent().expect("parent")).expect("mkdir");
            std::fs::write(
                &f,
                if content == "secret" {
                    "not a secret\n"
                } else {
                    content
                },
            )
            .expect("write");
        }
        let mut local = text.clone();
        for prefix in ["/etc/mailvault/", "/var/lib/mailvault/"] {
            local = local.replace(
                &format!("\"{prefix}"),
                &format!(
                    "\"{}/{}",
                    root.path().display(),
                    prefix.trim_start_matches('/')
                ),
            );
        }
        let config = root.path().join("config.toml");
        std::fs::write(&config, &local).expect("write config");

        in_process_check(command, &workload, &local, &config);
        let (bin, check) = match command {
            "mailvault-collector" => (common::binary(command), "--check-config"),
            "mailvault-aggregator" => (common::binary(command), "--check"),
            "mailvault-indexer" => (common::binary(command), "--check"),
            other => panic!("{workload}: unexpected command {other}"),
        };
        let run = |config: &Path| {
            Command::new(&bin)
                .arg("--config")
                .arg(config)
                .arg(check)
                .env_clear()
                .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                .stdin(Stdio::null())
                .output()
                .expect("running the binary")
        };
        let out = run(&config);
        assert!(
            out.status.success()
                && String::from_utf8_lossy(&out.stdout).contains("configuration OK"),
            "{workload}: {} {check} refused the rendered config:\n{}{}\n{local}",
            bin.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // The check really reads the file: an unknown key fails it.
        let bad = root.path().join("bad.toml");
        std::fs::write(&bad, format!("colour = \"blue\"\n{local}")).expect("write");
        let out = run(&bad);
        assert!(
            !out.status.success(),
            "{workload}: {check} accepted an unknown key"
        );
        checked += 1;
    }
    checked
}

/// The same config through the crate's own types (what `--check` calls in each `main.rs`).
fn in_process_check(command: &str, workload: &str, text: &str, path: &Path) {
    let result = match command {
        "mailvault-collector" => mailvault_collector::config::Config::load(path)
            .map(drop)
            .map_err(|e| e.to_string()),
        "mailvault-aggregator" => mailvault_aggregator::Config::parse(text, path)
            .map(drop)
            .map_err(|e| e.to_string()),
        "mailvault-indexer" => {
            mailvault_indexer::config::Config::parse(text, std::iter::empty::<(String, String)>())
                .map(drop)
                .map_err(|e| e.to_string())
        }
        other => Err(format!("unexpected command {other}")),
    };
    if let Err(e) = result {
        panic!("{workload}: the config type refused the rendered config: {e}\n{text}");
    }
}

// ---- invariants every render must keep ------------------------------------------------------

fn check_pods_least_privilege(r: &Rendered) {
    let pods = r.pod_specs();
    assert!(!pods.is_empty());
    for (name, pod) in pods {
        assert_eq!(pod["automountServiceAccountToken"], false, "{name}");
        let psc = &pod["securityContext"];
        assert_eq!(psc["runAsNonRoot"], true, "{name}: {psc}");
        assert_eq!(psc["seccompProfile"]["type"], "RuntimeDefault", "{name}");
        let uid = psc["runAsUser"].as_u64().expect("runAsUser");
        assert!(uid > 0, "{name}: runs as root");
        let containers = pod["containers"]
            .as_array()
            .into_iter()
            .chain(pod["initContainers"].as_array())
            .flatten();
        for c in containers {
            let sc = &c["securityContext"];
            let who = format!("{name} container {}", c["name"]);
            assert_eq!(sc["readOnlyRootFilesystem"], true, "{who}");
            assert_eq!(sc["allowPrivilegeEscalation"], false, "{who}");
            assert_eq!(sc["runAsNonRoot"], true, "{who}");
            assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{who}");
            assert!(sc["capabilities"]["add"].is_null(), "{who}");
            assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault", "{who}");
            for k in ["requests", "limits"] {
                for res in ["cpu", "memory"] {
                    assert!(
                        c["resources"][k][res].is_string(),
                        "{who}: resources.{k}.{res} missing"
                    );
                }
            }
            // Secrets reach the binaries as files only.
            assert!(c["envFrom"].is_null(), "{who}: envFrom");
            for e in c["env"].as_array().into_iter().flatten() {
                assert!(
                    e["valueFrom"].is_null(),
                    "{who}: env {} from a reference",
                    e["name"]
                );
            }
        }
    }
}

fn check_no_secret_in_config_maps(r: &Rendered, also: &[&str]) {
    let mut secrets: Vec<String> = r.secret_values();
    secrets.extend(also.iter().map(|s| s.to_string()));
    secrets.retain(|s| s.trim().len() >= 6);
    for cm in r.of_kind("ConfigMap") {
        for (k, v) in cm["data"].as_object().into_iter().flatten() {
            let v = v.as_str().unwrap_or("");
            for s in &secrets {
                for line in s.lines().filter(|l| l.trim().len() >= 6) {
                    assert!(
                        !v.contains(line.trim()),
                        "ConfigMap {} key {k} holds a secret value",
                        cm["metadata"]["name"]
                    );
                }
            }
        }
    }
    // Nor in any container's environment.
    for (name, pod) in r.pod_specs() {
        for c in pod["containers"].as_array().into_iter().flatten() {
            for e in c["env"].as_array().into_iter().flatten() {
                let v = e["value"].as_str().unwrap_or("");
                for s in &secrets {
                    assert!(
                        !v.contains(s.trim()),
                        "{name}: env {} holds a secret",
                        e["name"]
                    );
                }
            }
        }
    }
}

fn check_workloads(r: &Rendered, aggregators: u64, tls: bool) {
    let agg = r.named("Deployment", &format!("{FULLNAME}-aggregator"));
    assert_eq!(agg["spec"]["replicas"].as_u64(), Some(aggregators));
    let pdb = r.named("PodDisruptionBudget", &format!("{FULLNAME}-aggregator"));
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"], agg["spec"]["selector"]["matchLabels"],
        "the PDB covers the aggregators"
    );
    for (k, v) in agg["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("labels")
    {
        assert_eq!(&agg["spec"]["template"]["metadata"]["labels"][k], v);
    }

    let sts = r.named("StatefulSet", &format!("{FULLNAME}-indexer"));
    assert_eq!(sts["spec"]["replicas"], 1);
    let claim = &sts["spec"]["volumeClaimTemplates"][0];
    let pod = &sts["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let index_mount = c["volumeMounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .find(|m| m["name"] == claim["metadata"]["name"])
        .expect("the index claim is mounted");
    let cfg: toml::Table =
        toml::from_str(&r.config_map_data(&format!("{FULLNAME}-indexer"))["indexer.toml"])
            .expect("indexer toml");
    let dir = cfg["index"]["dir"].as_str().expect("index.dir");
    assert!(
        dir.starts_with(&format!(
            "{}/",
            index_mount["mountPath"].as_str().expect("path")
        )),
        "index.dir {dir} is on the claim"
    );
    let listen = cfg["api"]["listen"].as_str().expect("api.listen");
    let port: u64 = listen
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");
    assert!(
        listen.starts_with("0.0.0.0:"),
        "the API listens beyond loopback: {listen}"
    );
    let svc = r.named("Service", &format!("{FULLNAME}-indexer"));
    assert_eq!(svc["spec"]["ports"][0]["port"].as_u64(), Some(port));
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], "grpc");
    assert_eq!(c["ports"][0]["name"], "grpc");
    assert_eq!(c["ports"][0]["containerPort"].as_u64(), Some(port));
    for (k, v) in svc["spec"]["selector"].as_object().expect("selector") {
        assert_eq!(&pod_labels(sts)[k], v, "the Service selects the indexer");
    }
    assert_eq!(cfg["api"].get("tls_cert").is_some(), tls);
    if tls {
        assert!(
            c["readinessProbe"]["tcpSocket"].is_object(),
            "gRPC probes cannot do TLS"
        );
    } else {
        assert_eq!(c["readinessProbe"]["grpc"]["port"].as_u64(), Some(port));
    }
    // Nothing connects to the aggregators and collectors, so nothing waits for them to be ready.
    for (name, pod) in r.pod_specs() {
        if !name.contains("-indexer") {
            assert!(pod["containers"][0]["readinessProbe"].is_null(), "{name}");
        }
    }
}

/// Every workload's `[metrics]` endpoint, `metrics` port, /healthz liveness probe and scrape
/// annotations when `port` is Some; none of them when metrics are off.
fn check_metrics(r: &Rendered, port: Option<u16>) {
    let workloads: Vec<&Value> = r
        .docs
        .iter()
        .map(|(_, d)| d)
        .filter(|d| ["Deployment", "StatefulSet"].contains(&d["kind"].as_str().unwrap_or("")))
        .collect();
    assert!(!workloads.is_empty());
    let configs = configs(r);
    assert_eq!(configs.len(), workloads.len(), "one config per workload");
    for (workload, _, _, _, text) in &configs {
        let cfg: toml::Table = toml::from_str(text).expect("toml");
        let listen = cfg.get("metrics").and_then(|m| m.get("listen"));
        match port {
            Some(p) => assert_eq!(
                listen.and_then(|l| l.as_str()),
                Some(format!("0.0.0.0:{p}").as_str()),
                "{workload}: [metrics] listen"
            ),
            None => assert!(cfg.get("metrics").is_none(), "{workload}: {text}"),
        }
    }
    for w in workloads {
        let name = w["metadata"]["name"].as_str().expect("name");
        let c = &w["spec"]["template"]["spec"]["containers"][0];
        let annotations = &w["spec"]["template"]["metadata"]["annotations"];
        let metrics_port = c["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == "metrics");
        match port {
            Some(p) => {
                let mp = metrics_port.unwrap_or_else(|| panic!("{name}: no metrics port"));
                assert_eq!(mp["containerPort"].as_u64(), Some(u64::from(p)), "{name}");
                assert_eq!(mp["protocol"], "TCP", "{name}");
                let probe = &c["livenessProbe"]["httpGet"];
                assert_eq!(probe["path"], "/healthz", "{name}: {}", c["livenessProbe"]);
                assert_eq!(probe["port"], "metrics", "{name}");
                assert_eq!(annotations["prometheus.io/scrape"], "true", "{name}");
                assert_eq!(annotations["prometheus.io/port"], p.to_string(), "{name}");
                assert_eq!(annotations["prometheus.io/path"], "/metrics", "{name}");
            }
            None => {
                assert!(metrics_port.is_none(), "{name}");
                assert!(c["livenessProbe"]["httpGet"].is_null(), "{name}");
                assert!(annotations.get("prometheus.io/scrape").is_none(), "{name}");
            }
        }
    }
}

/// The ports a NetworkPolicy ingress rule list opens, each with its `from` peers (null: all).
fn ingress_rules(policy: &Value) -> Vec<(u64, Value)> {
    let mut out = Vec::new();
    for rule in policy["spec"]["ingress"].as_array().into_iter().flatten() {
        for p in rule["ports"].as_array().expect("ingress ports") {
            out.push((
                p["port"].as_u64().expect("numeric port"),
                rule["from"].clone(),
            ));
        }
    }
    out
}

/// With the NetworkPolicy on: collectors and aggregators take only the metrics port, from
/// `metrics_from`; the indexer its API port from `api_from` and the metrics port from
/// `metrics_from`.
fn check_network_policies(r: &Rendered, metrics: Option<(u16, Value)>, api_from: Value) {
    let workers = r.named("NetworkPolicy", &format!("{FULLNAME}-workers"));
    let indexer = r.named("NetworkPolicy", &format!("{FULLNAME}-indexer"));
    // Which pods each policy selects, by component.
    let selected = &workers["spec"]["podSelector"]["matchExpressions"];
    let components = selected
        .as_array()
        .expect("matchExpressions")
        .iter()
        .find(|e| e["key"] == "app.kubernetes.io/component")
        .expect("component selector");
    assert_eq!(components["values"], json!(["aggregator", "collector"]));
    let api_port = r.named("Service", &format!("{FULLNAME}-indexer"))["spec"]["ports"][0]["port"]
        .as_u64()
        .expect("api port");
    match metrics {
        Some((port, from)) => {
            assert_eq!(
                ingress_rules(workers),
                vec![(u64::from(port), from.clone())]
            );
            assert_eq!(
                ingress_rules(indexer),
                vec![(api_port, api_from), (u64::from(port), from)]
            );
        }
        None => {
            assert_eq!(ingress_rules(workers), vec![], "no ingress at all");
            assert!(workers["spec"]["ingress"].is_null());
            assert_eq!(ingress_rules(indexer), vec![(api_port, api_from)]);
        }
    }
}

/// The aggregator and indexer name the NATS CA and credentials in `[nats]`, and both files are
/// mounted from the given Secrets (check_configs then runs the binaries on them).
/// The mount of directory `dir` in `container` and the pod volume behind it.
fn mount_at<'a>(
    pod: &'a Value,
    container: &'a Value,
    dir: &str,
    workload: &str,
) -> (&'a Value, &'a Value) {
    let mount = container["volumeMounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .find(|vm| vm["mountPath"] == dir)
        .unwrap_or_else(|| panic!("{workload}: nothing mounted at {dir}"));
    let volume = pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap_or_else(|| panic!("{workload}: no volume {}", mount["name"]));
    (mount, volume)
}

fn check_nats_files(r: &Rendered, ca_secret: &str, creds_secret: &str) {
    for (workload, pod, container, _, text) in configs(r) {
        let cfg: toml::Table = toml::from_str(&text).expect("toml");
        let m = mounted(r, &pod, &container);
        for (key, path, secret) in [
            (
                "ca_file",
                "/etc/mailvault/secrets/nats-ca/ca.crt",
                ca_secret,
            ),
            (
                "creds_file",
                "/etc/mailvault/secrets/nats/nats.creds",
                creds_secret,
            ),
        ] {
            assert_eq!(
                cfg.get("nats")
                    .and_then(|n| n.get(key))
                    .and_then(|v| v.as_str()),
                Some(path),
                "{workload}: nats.{key}\n{text}"
            );
            assert_eq!(
                m.files.get(path).map(String::as_str),
                Some("secret"),
                "{workload}"
            );
            let dir = path.rsplit_once('/').expect("dir").0;
            let (mount, volume) = mount_at(&pod, &container, dir, &workload);
            assert_eq!(volume["secret"]["secretName"], secret, "{workload}: {key}");
            assert_eq!(mount["readOnly"], true, "{workload}: {key}");
        }
        // The CA reaches the clients through ca_file, not the process-wide trust store.
        for e in container["env"].as_array().into_iter().flatten() {
            let n = e["name"].as_str().unwrap_or("");
            assert!(!n.starts_with("SSL_CERT_"), "{workload}: env {n}");
        }
    }
}

/// Every service's `[telemetry]`: the chart's endpoint and interval, the CA file mounted
/// read-only from its Secret (when one is given); no section at all when OTLP is off. The
/// endpoint reaches the binaries only through their config, not through OTEL_* variables they
/// do not read.
fn check_telemetry(r: &Rendered, expected: Option<(&str, &str, Option<&str>)>) {
    let all = configs(r);
    assert!(!all.is_empty());
    for (workload, pod, container, _, text) in all {
        let cfg: toml::Table = toml::from_str(&text).expect("toml");
        for e in container["env"].as_array().into_iter().flatten() {
            let n = e["name"].as_str().unwrap_or("");
            assert!(!n.starts_with("OTEL_"), "{workload}: env {n}");
        }
        let Some((endpoint, interval, ca_secret)) = expected else {
            assert!(cfg.get("telemetry").is_none(), "{workload}\n{text}");
            continue;
        };
        let t = cfg
            .get("telemetry")
            .unwrap_or_else(|| panic!("{workload}: no [telemetry]\n{text}"));
        assert_eq!(t["otlp_endpoint"].as_str(), Some(endpoint), "{workload}");
        assert_eq!(t["export_interval"].as_str(), Some(interval), "{workload}");
        let ca = t.get("ca_file").and_then(|v| v.as_str());
        let Some(secret) = ca_secret else {
            assert_eq!(ca, None, "{workload}");
            continue;
        };
        let path = "/etc/mailvault/secrets/otel-ca/ca.crt";
        assert_eq!(ca, Some(path), "{workload}");
        let (mount, volume) = mount_at(
            &pod,
            &container,
            "/etc/mailvault/secrets/otel-ca",
            &workload,
        );
        assert_eq!(mount["readOnly"], true, "{workload}");
        assert_eq!(volume["secret"]["secretName"], secret, "{workload}");
        assert_eq!(volume["secret"]["items"][0]["path"], "ca.crt", "{workload}");
        // The full values also name a headers Secret: mounted the same way.
        let headers = t.get("headers_file").and_then(|v| v.as_str());
        assert_eq!(
            headers,
            Some("/etc/mailvault/secrets/otel-headers/headers"),
            "{workload}"
        );
        let (mount, volume) = mount_at(
            &pod,
            &container,
            "/etc/mailvault/secrets/otel-headers",
            &workload,
        );
        assert_eq!(mount["readOnly"], true, "{workload}");
        assert_eq!(volume["secret"]["secretName"], "otel-headers", "{workload}");
    }
}

fn pod_labels(workload: &Value) -> &Value {
    &workload["spec"]["template"]["metadata"]["labels"]
}

#[test]
fn chart_defaults_lint_render_validate_and_load() {
    let r = render(None);
    check_pods_least_privilege(&r);
    check_no_secret_in_config_maps(&r, &[]);
    // TLS by default: the chart makes the API's certificate; no other secret value is in it.
    check_workloads(&r, 2, true);
    let secrets: Vec<&Value> = r.of_kind("Secret").collect();
    assert_eq!(secrets.len(), 1, "only the API certificate: {secrets:?}");
    assert_eq!(secrets[0]["type"], "kubernetes.io/tls");
    assert_eq!(
        secrets[0]["metadata"]["annotations"]["helm.sh/resource-policy"],
        "keep"
    );
    assert!(r.notes.contains("self-signed"), "{}", r.notes);
    assert!(r.notes.contains("--ca-cert api-ca.crt"), "{}", r.notes);
    assert_eq!(r.of_kind("NetworkPolicy").count(), 0);
    assert!(
        r.of_kind("Deployment").all(|d| !d["metadata"]["name"]
            .as_str()
            .unwrap_or("")
            .contains("collector")),
        "no collectors by default"
    );
    // The passphrase and token Secrets the NOTES tell the administrator to create.
    let sts = r.named("StatefulSet", &format!("{FULLNAME}-indexer"));
    let secrets: BTreeSet<&str> = sts["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .filter_map(|v| v["secret"]["secretName"].as_str())
        .collect();
    assert_eq!(
        secrets,
        BTreeSet::from([
            "mv-mailvault-passphrase",
            "mv-mailvault-tokens",
            "mv-mailvault-indexer-tls"
        ])
    );
    assert_eq!(check_configs(&r), 2, "the aggregator and the indexer");
    check_metrics(&r, Some(9464));
    check_telemetry(&r, None);
    // Every service logs JSON lines by default.
    for (workload, _, container, _, _) in configs(&r) {
        let args = container["args"].as_array().expect("args");
        assert!(
            args.iter().any(|a| a == "--log-json"),
            "{workload}: {args:?}"
        );
    }
    for kind in ["ServiceMonitor", "PrometheusRule"] {
        assert_eq!(r.of_kind(kind).count(), 0, "{kind} is off by default");
    }
    assert_eq!(r.of_kind("ConfigMap").count(), 2, "no dashboard by default");
    assert!(r.notes.contains("port 9464"), "{}", r.notes);
}

#[test]
fn chart_full_values_two_collectors_tls_existing_secrets() {
    let r = render(Some(&full_values()));
    check_pods_least_privilege(&r);
    check_no_secret_in_config_maps(&r, &[]);
    check_workloads(&r, 3, true);
    assert_eq!(
        r.of_kind("Secret").count(),
        0,
        "existing Secrets are only referenced"
    );
    assert_eq!(r.of_kind("NetworkPolicy").count(), 2);

    // One Deployment and one config per collector, each with its own server and source.
    let mut urls = BTreeSet::new();
    for (name, url) in [
        ("exch01", "https://exch01.contoso.com/EWS/Exchange.asmx"),
        ("exch02", "https://exch02.contoso.com/EWS/Exchange.asmx"),
    ] {
        let d = r.named("Deployment", &format!("{FULLNAME}-collector-{name}"));
        assert_eq!(d["spec"]["replicas"], 1);
        assert_eq!(d["spec"]["strategy"]["type"], "Recreate");
        let cm = d["spec"]["template"]["spec"]["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .find_map(|v| v["configMap"]["name"].as_str())
            .expect("config volume");
        let cfg: toml::Table =
            toml::from_str(&r.config_map_data(cm)["collector.toml"]).expect("toml");
        assert_eq!(cfg["source"].as_str(), Some(name));
        assert_eq!(cfg["ews"]["url"].as_str(), Some(url));
        assert_eq!(
            cfg["ews"]["username"].as_str(),
            Some("CONTOSO\\svc-mailvault")
        );
        assert_eq!(
            cfg["nats"]["creds_file"].as_str(),
            Some("/etc/mailvault/secrets/nats/nats.creds")
        );
        urls.insert(url);
        let secrets: BTreeSet<&str> = d["spec"]["template"]["spec"]["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .filter_map(|v| v["secret"]["secretName"].as_str())
            .collect();
        assert_eq!(
            secrets,
            BTreeSet::from([
                "mailvault-ews",
                "contoso-root-ca",
                "nats-ca",
                "mailvault-nats-creds",
                "otel-ca",
                "otel-headers"
            ])
        );
    }
    assert_eq!(urls.len(), 2);
    let csv = &r.config_map_data(&format!("{FULLNAME}-collector-exch02"))["mailboxes.csv"];
    assert!(csv.contains("journal@contoso.com"));

    // The aggregators and the indexer read the NATS CA and credentials like the collectors.
    check_nats_files(&r, "nats-ca", "mailvault-nats-creds");
    assert!(!r.notes.contains("WARNING"), "{}", r.notes);
    check_telemetry(
        &r,
        Some((
            "https://otel-collector.monitoring.svc:4318",
            "30s",
            Some("otel-ca"),
        )),
    );
    check_metrics(&r, Some(9464));
    check_network_policies(
        &r,
        Some((
            9464,
            json!([{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]),
        )),
        json!([{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "mailvault-frontend"}}}]),
    );
    assert_eq!(check_configs(&r), 4);
}

#[test]
fn chart_secrets_from_values_stay_out_of_config_maps() {
    let passphrase = "correct horse battery staple";
    let s3_secret = "s3-SECRET-wJalrXUtnFEMI";
    let ews_password = "ews-P4ssw0rd-exch01";
    let tokens = "[[token]]\nname = \"admin\"\nrole = \"admin\"\nhash = \"0f1e2d3c4b5a69788796a5b4c3d2e1f0\"\n";
    let values = json!({
        "s3": {"endpoint": "http://garage:3900", "region": "garage", "accessKeyId": "GKabc123",
               "secretAccessKey": {"value": s3_secret}},
        "repository": {"passphrase": {"value": passphrase}},
        "indexer": {"tokens": {"content": tokens}},
        "collectors": [{"name": "exch01",
                        "ews": {"url": "https://exch01/EWS/Exchange.asmx", "username": "svc",
                                "password": ews_password},
                        "mailboxes": ["alice@contoso.com"]}]
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("values.yaml");
    std::fs::write(&path, values.to_string()).expect("write");
    let r = render(Some(&path));
    let stored = r.secret_values();
    for s in [passphrase, s3_secret, ews_password, tokens] {
        assert!(
            stored.iter().any(|v| v == s),
            "the chart's Secret holds {s:?}"
        );
    }
    check_no_secret_in_config_maps(&r, &[passphrase, s3_secret, ews_password, tokens]);
    check_pods_least_privilege(&r);
    assert_eq!(check_configs(&r), 3);
}

#[test]
fn chart_refuses_bad_values() {
    for (values, expect) in [
        (json!({"aggregator": {"replica": 3}}), "replica"),
        (json!({"collectors": [{"name": "exch01.corp"}]}), "name"),
        (
            json!({"collectors": [{"name": "exch01", "ews": {"url": "https://x/EWS/Exchange.asmx", "username": "u", "password": "p"}}]}),
            "mailboxes",
        ),
        (
            json!({"collectors": [
                {"name": "a", "ews": {"url": "https://a/EWS", "username": "u", "password": "p"}, "mailboxes": ["x@y"]},
                {"name": "a", "ews": {"url": "https://b/EWS", "username": "u", "password": "p"}, "mailboxes": ["x@y"]}]}),
            "twice",
        ),
        (
            json!({"nats": {"url": "nats://a:4222,http://b:4222"}}),
            "url",
        ),
        // Plain-text NATS only when asked for in so many words.
        (
            json!({"nats": {"url": "nats://nats:4222"}}),
            "nats.allowPlaintext",
        ),
        (
            json!({"metrics": {"enabled": false, "serviceMonitor": {"enabled": true}}}),
            "needs metrics.enabled",
        ),
        (json!({"metrics": {"port": 0}}), "port"),
    ] {
        let refusal = render_refusal(&values);
        assert!(
            refusal.contains(expect),
            "values {values} were not refused for {expect:?}: {refusal:?}"
        );
    }
}

#[test]
fn plain_text_nats_is_rendered_only_when_allowed() {
    let r = render_values(&json!({"nats": {"url": "nats://nats:4222", "allowPlaintext": true}}));
    let nats = |text: &str| -> toml::Value {
        let t: toml::Table = toml::from_str(text).expect("rendered TOML");
        t["nats"].clone()
    };
    let mut seen = 0;
    for (workload, _, _, _, text) in configs(&r) {
        assert_eq!(
            nats(&text)["allow_plaintext"].as_bool(),
            Some(true),
            "{workload}"
        );
        seen += 1;
    }
    assert!(seen >= 2, "{seen} configs");
    // The default is TLS, and nothing says plain text is fine.
    let r = render(None);
    for (workload, _, _, _, text) in configs(&r) {
        let n = nats(&text);
        assert!(
            n["url"].as_str().is_some_and(|u| u.starts_with("tls://")),
            "{workload}: {n}"
        );
        assert!(n.get("allow_plaintext").is_none(), "{workload}");
        assert_eq!(n["replicas"].as_integer(), Some(1), "{workload}");
    }
    // Against a cluster: three copies of what the services create.
    let r = render(Some(&full_values()));
    for (workload, _, _, _, text) in configs(&r) {
        assert_eq!(nats(&text)["replicas"].as_integer(), Some(3), "{workload}");
    }
}

/// The chart-made certificate is one the API serves and a client verifies: rendered, written
/// where the pod would mount it, served by the real gRPC API, and trusted with `--ca-cert` as
/// NOTES say (through the port-forward, as `localhost`). With `selfSigned: false` the API is
/// plain text and the config says so in so many words.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_made_api_certificate_serves_and_verifies() {
    use base64::Engine as _;
    use mailvault_indexer::api::{self, Api, AuditLog, GrpcArchive, Role, TlsFiles, Tokens};
    use mailvault_proto::api::v1 as pb;
    mailvault_runtime::install_crypto_provider();
    let r = tokio::task::block_in_place(|| render(None));
    let secret = r.named("Secret", &format!("{FULLNAME}-indexer-tls"));
    let b64 = base64::engine::general_purpose::STANDARD;
    let field = |k: &str| {
        b64.decode(secret["data"][k].as_str().expect("data"))
            .expect("base64")
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert, field("tls.crt")).expect("cert");
    std::fs::write(&key, field("tls.key")).expect("key");

    let repo = mailvault_format::Repository::init(
        std::sync::Arc::new(mailvault_format::MemoryStore::new()),
        b"pass",
        mailvault_format::InitOptions {
            kdf: mailvault_format::KdfParams::fast_insecure(),
            ..Default::default()
        },
    )
    .await
    .expect("repository");
    let index = mailvault_indexer::Index::open(&dir.path().join("index")).expect("index");
    let mut tokens = Tokens::default();
    let token = tokens.issue("admin", Role::Admin, None);
    let apis = Api::new(index, repo.clone(), AuditLog::start(repo), None);
    let (listener, addr) = api::grpc::bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("bind");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(api::serve(
        listener,
        GrpcArchive::new(apis, tokens),
        Some(TlsFiles { cert, key }),
        async {
            let _ = stopped.await;
        },
    ));
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(field("tls.crt")))
        .domain_name("localhost");
    let channel = tonic::transport::Channel::from_shared(format!("https://{addr}"))
        .expect("uri")
        .tls_config(tls)
        .expect("tls config")
        .connect()
        .await
        .expect("TLS handshake with the chart-made certificate");
    let mut c = pb::archive_client::ArchiveClient::new(channel);
    let mut req = tonic::Request::new(pb::ListMailboxesRequest {});
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    c.list_mailboxes(req).await.expect("a call over TLS");
    // Without trusting it, the handshake fails.
    let untrusted = tonic::transport::Channel::from_shared(format!("https://{addr}"))
        .expect("uri")
        .tls_config(tonic::transport::ClientTlsConfig::new().domain_name("localhost"))
        .expect("tls config")
        .connect()
        .await;
    assert!(untrusted.is_err(), "an unknown certificate was trusted");
    let _ = stop.send(());
    server.await.expect("server task").expect("server");

    // Opting out: plain text, said in the config and in NOTES.
    let r = tokio::task::block_in_place(|| {
        render_values(&json!({"indexer": {"tls": {"selfSigned": false}}}))
    });
    assert_eq!(r.of_kind("Secret").count(), 0);
    let (_, _, _, _, text) = configs(&r)
        .into_iter()
        .find(|(w, ..)| w.ends_with("-indexer"))
        .expect("indexer config");
    let cfg: toml::Table = toml::from_str(&text).expect("toml");
    assert_eq!(cfg["api"]["allow_plaintext"].as_bool(), Some(true));
    assert!(cfg["api"].get("tls_cert").is_none());
    assert!(r.notes.contains("plain text"), "{}", r.notes);
}

fn render_values(values: &Value) -> Rendered {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("values.yaml");
    std::fs::write(&path, values.to_string()).expect("write");
    render(Some(&path))
}

#[test]
fn chart_nats_seed_list_ca_and_credentials_from_values() {
    let url = "tls://nats-0.nats:4222,tls://nats-1.nats:4222, tls://nats-2.nats:4222";
    let creds = "-----BEGIN NATS USER JWT-----\neyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5LW5rZXkifQ.e30.c2ln\n------END NATS USER JWT------\n";
    let ca = "-----BEGIN CERTIFICATE-----\nMIIBkTCB+wIJAKHBfpegPjMCMA0GCSqGSIb3DQEBCwUAMA0xCzAJBgNVBAYTAlVT\n-----END CERTIFICATE-----\n";
    let r = render_values(&json!({
        "nats": {"url": url, "credentials": {"creds": creds}, "tls": {"ca": {"pem": ca}}},
        "repository": {"passphrase": {"existingSecret": "pp"}},
        "indexer": {"tokens": {"existingSecret": "tok"}},
        "collectors": [{"name": "exch01",
                        "ews": {"url": "https://exch01/EWS/Exchange.asmx", "username": "svc",
                                "existingSecret": "ews"},
                        "mailboxes": ["alice@contoso.com"]}]
    }));
    for (workload, _, _, _, text) in configs(&r) {
        let cfg: toml::Table = toml::from_str(&text).expect("toml");
        assert_eq!(cfg["nats"]["url"].as_str(), Some(url), "{workload}");
    }
    // The chart's own Secret holds both files; aggregator, indexer and collector mount them.
    check_nats_files(
        &r,
        &format!("{FULLNAME}-secrets"),
        &format!("{FULLNAME}-secrets"),
    );
    let stored = r.secret_values();
    assert!(stored.iter().any(|v| v == creds) && stored.iter().any(|v| v == ca));
    check_no_secret_in_config_maps(&r, &[creds]);
    assert_eq!(check_configs(&r), 3);
}

#[test]
fn chart_metrics_off() {
    let r = render_values(&json!({
        "metrics": {"enabled": false},
        "telemetry": {"otlpEndpoint": "http://otel-collector:4318"},
        "aggregator": {"logJson": false},
        "networkPolicy": {"enabled": true},
        "collectors": [{"name": "exch01",
                        "ews": {"url": "https://exch01/EWS/Exchange.asmx", "username": "svc",
                                "existingSecret": "ews"},
                        "mailboxes": ["alice@contoso.com"]}]
    }));
    check_metrics(&r, None);
    check_network_policies(&r, None, Value::Null);
    check_telemetry(&r, Some(("http://otel-collector:4318", "10s", None)));
    for (workload, _, container, _, _) in configs(&r) {
        let args = container["args"].as_array().expect("args");
        let json = args.iter().any(|a| a == "--log-json");
        assert_eq!(
            json,
            !workload.ends_with("-aggregator"),
            "{workload}: {args:?}"
        );
    }
    // The indexer is still probed, on its API port (TLS by default: a TCP probe; Kubernetes'
    // gRPC probe cannot speak TLS).
    let sts = r.named("StatefulSet", &format!("{FULLNAME}-indexer"));
    let c = &sts["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        c["livenessProbe"]["tcpSocket"]["port"], "grpc",
        "{}",
        c["livenessProbe"]
    );
    assert_eq!(check_configs(&r), 3);
}

/// The ServiceMonitor, its Service, the PrometheusRule and the dashboard ConfigMap, all on, on a
/// non-default port with a NetworkPolicy that lets one Prometheus pod in.
#[test]
fn chart_service_monitor_rules_and_dashboard() {
    let from = json!([{
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "observability"}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}
    }]);
    let r = render_values(&json!({
        "metrics": {
            "port": 9100,
            "serviceMonitor": {"enabled": true, "interval": "15s", "labels": {"release": "kps"}},
            "prometheusRule": {"enabled": true, "labels": {"release": "kps"}},
            "grafanaDashboard": {"enabled": true, "annotations": {"grafana_folder": "Exchange"}}
        },
        "networkPolicy": {"enabled": true, "metricsFrom": from},
        "collectors": [{"name": "exch01",
                        "ews": {"url": "https://exch01/EWS/Exchange.asmx", "username": "svc",
                                "existingSecret": "ews"},
                        "mailboxes": ["alice@contoso.com"]}]
    }));
    check_metrics(&r, Some(9100));
    check_network_policies(&r, Some((9100, from)), Value::Null);
    check_pods_least_privilege(&r);
    assert_eq!(check_configs(&r), 3);

    // kubernetes-validate has no schema for the operator's kinds; the CRD models checked them.
    for kind in ["ServiceMonitor", "PrometheusRule"] {
        assert_eq!(
            r.validated_by[&format!("{kind}/{FULLNAME}")],
            "cloudcoil-models-prometheus-operator"
        );
    }
    for (key, by) in &r.validated_by {
        if !key.starts_with("ServiceMonitor/") && !key.starts_with("PrometheusRule/") {
            assert_eq!(by, "kubernetes-validate", "{key}");
        }
    }

    // The ServiceMonitor finds the Service, the Service finds every workload's pods, and the
    // endpoint's port is each container's metrics port.
    let sm = r.named("ServiceMonitor", FULLNAME);
    assert_eq!(sm["metadata"]["labels"]["release"], "kps");
    let svc = r.named("Service", &format!("{FULLNAME}-metrics"));
    assert_eq!(svc["spec"]["clusterIP"], "None");
    for (k, v) in sm["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("selector")
    {
        assert_eq!(
            &svc["metadata"]["labels"][k], v,
            "the ServiceMonitor selects the Service"
        );
    }
    assert_eq!(
        sm["spec"]["namespaceSelector"]["matchNames"],
        json!([NAMESPACE])
    );
    let endpoint = &sm["spec"]["endpoints"][0];
    assert_eq!(endpoint["path"], "/metrics");
    assert_eq!(endpoint["interval"], "15s");
    let port = &svc["spec"]["ports"][0];
    assert_eq!(endpoint["port"], port["name"]);
    assert_eq!(port["targetPort"], "metrics");
    assert_eq!(port["port"].as_u64(), Some(9100));
    // job="mailvault", what ops/monitoring/alerts.yml selects.
    let job_label = sm["spec"]["jobLabel"].as_str().expect("jobLabel");
    assert_eq!(svc["metadata"]["labels"][job_label], "mailvault");
    let workloads: Vec<&Value> = r
        .docs
        .iter()
        .map(|(_, d)| d)
        .filter(|d| ["Deployment", "StatefulSet"].contains(&d["kind"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(workloads.len(), 3);
    for w in workloads {
        for (k, v) in svc["spec"]["selector"].as_object().expect("selector") {
            assert_eq!(&pod_labels(w)[k], v, "{}", w["metadata"]["name"]);
        }
    }

    // The rules and the dashboard are ops/monitoring's files, through the chart's symlinks.
    let ops = repo_root().join("ops/monitoring");
    for (chart_file, ops_file) in [
        ("files/alerts.yml", "alerts.yml"),
        ("files/mailvault-dashboard.json", "grafana/mailvault.json"),
    ] {
        assert_eq!(
            std::fs::canonicalize(chart_dir().join(chart_file)).expect("chart file"),
            std::fs::canonicalize(ops.join(ops_file)).expect("ops file"),
            "{chart_file} is a link to ops/monitoring/{ops_file}"
        );
    }
    let rule = r.named("PrometheusRule", FULLNAME);
    assert_eq!(rule["metadata"]["labels"]["release"], "kps");
    let rendered_alerts: Vec<&str> = rule["spec"]["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules"))
        .map(|r| r["alert"].as_str().expect("alert"))
        .collect();
    let rules_text = std::fs::read_to_string(ops.join("alerts.yml")).expect("alerts.yml");
    let file_alerts: Vec<&str> = rules_text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert!(file_alerts.len() >= 5, "{file_alerts:?}");
    assert_eq!(rendered_alerts, file_alerts);
    let cm = r.named("ConfigMap", &format!("{FULLNAME}-dashboard"));
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    assert_eq!(cm["metadata"]["annotations"]["grafana_folder"], "Exchange");
    let dashboard: Value =
        serde_json::from_str(cm["data"]["mailvault.json"].as_str().expect("dashboard"))
            .expect("dashboard JSON");
    let file: Value = serde_json::from_str(
        &std::fs::read_to_string(ops.join("grafana/mailvault.json")).expect("dashboard file"),
    )
    .expect("JSON");
    assert_eq!(dashboard, file);
    assert!(r.notes.contains("ServiceMonitor"), "{}", r.notes);
}

#[test]
fn the_charts_nats_permissions_are_what_the_services_need() {
    use mailvault_runtime::nats::Component;
    use mailvault_runtime::nats::permissions::{Names, permissions};
    let file = chart_dir().join("files/nats-permissions.json");
    let chart: Value =
        serde_json::from_str(&std::fs::read_to_string(&file).expect("read")).expect("json");
    for c in Component::ALL {
        let code = serde_json::to_value(permissions(c, &Names::default(), None)).expect("json");
        assert_eq!(
            chart[c.name()],
            code,
            "{} is stale for the {}: regenerate it with `mailvault nats permissions {}` for each \
             component",
            file.display(),
            c.name(),
            c.name()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_nats_users_each_pod_its_own_seed_and_a_real_server_takes_the_block() {
    use mailvault_runtime::nats::permissions::{Names, authorization_block, generate_users};
    use mailvault_runtime::nats::{Component, NatsAuth, connect};
    let users = generate_users(&[], &Names::default()).expect("nkeys");
    let mut values_users = serde_json::Map::new();
    for u in &users {
        values_users.insert(
            u.name.clone(),
            json!({"publicKey": u.user.nkey, "seed": u.seed}),
        );
    }
    let r = render_values(&json!({
        "nats": {"url": "tls://nats:4222", "users": values_users},
        "repository": {"passphrase": {"existingSecret": "pp"}},
        "indexer": {"tokens": {"existingSecret": "tok"}},
        "collectors": [{"name": "exch01",
                        "ews": {"url": "https://exch01/EWS/Exchange.asmx", "username": "svc",
                                "existingSecret": "ews"},
                        "mailboxes": ["alice@contoso.com"]}]
    }));
    // Each workload reads its own component's seed, and only that one.
    let seed_path = "/etc/mailvault/secrets/nats-user/seed";
    let mut seen = 0;
    for (workload, pod, container, _, text) in configs(&r) {
        let component = ["collector", "aggregator", "indexer"]
            .into_iter()
            .find(|c| workload.contains(c))
            .unwrap_or_else(|| panic!("{workload}: which component?"));
        let cfg: toml::Table = toml::from_str(&text).expect("toml");
        assert_eq!(
            cfg["nats"].get("nkey_file").and_then(|v| v.as_str()),
            Some(seed_path),
            "{workload}\n{text}"
        );
        let (mount, volume) = mount_at(
            &pod,
            &container,
            "/etc/mailvault/secrets/nats-user",
            &workload,
        );
        assert_eq!(mount["readOnly"], true);
        let keys: Vec<&str> = volume["secret"]["items"]
            .as_array()
            .expect("items")
            .iter()
            .filter_map(|i| i["key"].as_str())
            .collect();
        assert_eq!(keys, [format!("nats-{component}.nk")], "{workload}");
        let all_keys: Vec<&str> = pod["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .flat_map(|v| v["secret"]["items"].as_array().into_iter().flatten())
            .filter_map(|i| i["key"].as_str())
            .filter(|k| k.ends_with(".nk"))
            .collect();
        assert_eq!(
            all_keys.len(),
            1,
            "{workload} mounts another component's seed: {all_keys:?}"
        );
        seen += 1;
    }
    assert_eq!(seen, 3);
    for u in &users {
        assert!(
            r.secret_values().contains(&u.seed),
            "{}'s seed is in the Secret",
            u.name
        );
    }
    check_no_secret_in_config_maps(
        &r,
        &users.iter().map(|u| u.seed.as_str()).collect::<Vec<_>>(),
    );

    // The rendered block is the CLI's, and a real nats-server admits each component by it.
    let data = r.config_map_data(&format!("{FULLNAME}-nats-users"));
    let conf = &data["mailvault-users.conf"];
    let parse = |text: &str| -> Value {
        serde_json::from_str(
            text.trim()
                .strip_prefix("authorization:")
                .expect("key")
                .trim(),
        )
        .expect("json")
    };
    let entries: Vec<_> = users.iter().map(|u| u.user.clone()).collect();
    assert_eq!(parse(conf), parse(&authorization_block(&entries)));
    let dir = tempfile::tempdir().expect("tempdir");
    let conf_path = dir.path().join("mailvault-users.conf");
    std::fs::write(&conf_path, conf).expect("write");
    let nats =
        mailvault_harness::NatsServer::start_with_args(&["-c", conf_path.to_str().expect("utf-8")])
            .expect("nats-server takes the chart's block");
    for u in &users {
        let seed = dir.path().join(format!("{}.nk", u.name));
        std::fs::write(&seed, &u.seed).expect("seed");
        let component = Component::ALL
            .into_iter()
            .find(|c| c.name() == u.name)
            .expect("component");
        let auth = NatsAuth {
            nkey_file: Some(seed),
            ..NatsAuth::default()
        };
        connect(component, &u.name, &nats.url(), &auth)
            .await
            .unwrap_or_else(|e| panic!("{} logs in: {e}", u.name))
            .flush()
            .await
            .expect("round trip");
    }
}
