use serde_json::json;

use super::manifests::*;
use super::*;

fn yaml(text: &str) -> Yaml {
    serde_yaml::from_str(text).unwrap()
}

fn shipped(path: &str) -> Yaml {
    yaml(&read(&workspace::root().join(path)).unwrap())
}

/// The checked-in PrometheusRule is generated from the rules file. With SOCKMESH_BLESS=1 it
/// is rewritten instead (after editing deploy/prometheus/sockmesh-rules.yaml).
#[test]
fn prometheus_rule_is_generated_from_the_rules_file() {
    let root = workspace::root();
    if env::var_os("SOCKMESH_BLESS").is_some() {
        let rules = read(&root.join(RULES)).unwrap();
        fs::write(root.join(PROMETHEUS_RULE), prometheus_rule(&rules).unwrap()).unwrap();
    }
    check_prometheus_rule(&root).unwrap();
}

#[test]
fn prometheus_rule_keeps_the_groups_and_their_comments() {
    let rules = "# header\ngroups:\n  # a group\n  - name: g\n    rules:\n\n      \
                 - record: r\n        expr: |\n          sum(x)\n";
    let rule = prometheus_rule(rules).unwrap();
    let expected = "spec:\n  groups:\n    # a group\n    - name: g\n      rules:\n\n        \
                    - record: r\n          expr: |\n            sum(x)\n";
    assert!(rule.ends_with(expected), "{rule}");
    let doc = yaml(&rule);
    assert_eq!(
        dig(&doc, &["spec", "groups"]),
        dig(&yaml(rules), &["groups"])
    );
    assert!(!rule.contains("# header"));
    assert!(prometheus_rule("rules: []\n").is_err());
}

#[test]
fn meshpolicy_crd_is_structural() {
    check_crd_structural(&shipped(CRD)).unwrap();
    let mut bad = shipped(CRD);
    let spec = dig(&bad, &["spec", "versions"])
        .unwrap()
        .as_sequence()
        .unwrap()[0]
        .clone();
    let mut spec = spec;
    spec["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["lb"] =
        yaml("{enum: [maglev]}");
    bad["spec"]["versions"] = Yaml::Sequence(vec![spec]);
    let err = check_crd_structural(&bad).unwrap_err().to_string();
    assert!(err.contains("v1alpha1.spec.lb: no type"), "{err}");

    // allowed_callers entries are strings or objects: an open node, typeless, as the API
    // server allows; one that still lists fields, or a oneOf, is not structural.
    let callers = |crd: &Yaml| {
        crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
            ["allowed_callers"]["items"]
            .clone()
    };
    let items = callers(&shipped(CRD));
    assert_eq!(items.get("type"), None);
    assert_eq!(
        items.get("x-kubernetes-preserve-unknown-fields"),
        Some(&Yaml::Bool(true))
    );
    for (edit, fragment) in [
        (
            "{x-kubernetes-preserve-unknown-fields: true, properties: {namespace: {type: string}}}",
            "allowed_callers[]: a node without a type describes no fields",
        ),
        (
            "{oneOf: [{type: string}, {type: object}]}",
            "allowed_callers[]: oneOf is not used",
        ),
    ] {
        let mut bad = shipped(CRD);
        bad["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
            ["properties"]["allowed_callers"]["items"] = yaml(edit);
        let err = check_crd_structural(&bad).unwrap_err().to_string();
        assert!(err.contains(fragment), "{err}");
    }
}

#[test]
fn example_policy_callers_are_names_or_selectors() {
    let crd = shipped(CRD);
    let example = shipped(EXAMPLE_POLICY);
    let callers = example["spec"]["allowed_callers"].as_sequence().unwrap();
    assert!(
        callers.iter().all(Yaml::is_mapping),
        "the example admits by identity: {callers:?}"
    );
    // A name is given its workload; a bad selector is the model's error, with its path.
    for (entry, ok) in [
        ("shop-frontend-0", None),
        ("{namespace: shop, service_account: web}", None),
        ("{namespace: Shop}", Some("allowed_callers[2].namespace")),
        ("{service_acount: web}", Some("service_acount")),
        ("[shop]", Some("neither a workload name nor a selector")),
    ] {
        let mut example = example.clone();
        example["spec"]["allowed_callers"]
            .as_sequence_mut()
            .unwrap()
            .push(yaml(entry));
        let got = check_example_policy(&crd, &example);
        match ok {
            None => got.unwrap(),
            Some(fragment) => {
                let err = format!("{:#}", got.unwrap_err());
                assert!(err.contains(fragment), "{entry}: {err}");
            }
        }
    }
}

#[test]
fn example_policy_sets_every_crd_field_and_is_a_valid_service() {
    let crd = shipped(CRD);
    let fields = crd_spec_fields(&crd).unwrap();
    for f in [
        "lb",
        "outlier.max_ban",
        "routes[].weight_split[].percent",
        "locality.prefer_zone",
    ] {
        assert!(fields.contains(f), "{f} not in {fields:?}");
    }
    check_example_policy(&crd, &shipped(EXAMPLE_POLICY)).unwrap();
}

#[test]
fn example_policy_errors_name_the_field() {
    let crd = shipped(CRD);
    let mut example = shipped(EXAMPLE_POLICY);
    example["spec"]["circuit"]
        .as_mapping_mut()
        .unwrap()
        .remove("cooldown");
    let err = check_example_policy(&crd, &example)
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not set circuit.cooldown"), "{err}");

    // A name the model does not know (a CRD drifting from docs/config.md) is refused by it.
    let mut crd_typo = crd.clone();
    let mut example = shipped(EXAMPLE_POLICY);
    let spec = &mut crd_typo["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
        ["spec"]["properties"]["limits"]["properties"];
    spec.as_mapping_mut()
        .unwrap()
        .insert("max_conns".into(), yaml("{type: integer}"));
    example["spec"]["limits"]["max_conns"] = 5.into();
    let err = format!(
        "{:#}",
        check_example_policy(&crd_typo, &example).unwrap_err()
    );
    assert!(err.contains("max_conns"), "{err}");
}

const DAEMONSET: &str = "
kind: DaemonSet
spec:
  template:
    spec:
      serviceAccountName: sockmesh-agent
      automountServiceAccountToken: false
      initContainers:
        - name: mount
          securityContext:
            privileged: false
            allowPrivilegeEscalation: false
            capabilities: {drop: [ALL], add: [SYS_ADMIN]}
      containers:
        - name: agent
          securityContext:
            privileged: false
            allowPrivilegeEscalation: false
            capabilities: {drop: [ALL], add: [BPF, NET_ADMIN, PERFMON, SYS_ADMIN, SYS_PTRACE]}
";

#[test]
fn agent_keeps_to_its_capabilities() {
    let objects = |text: &str| {
        vec![yaml(&text.replace(
            "kind: DaemonSet",
            "kind: DaemonSet\nmetadata: {name: sockmesh-agent}",
        ))]
    };
    let err = |text: &str| format!("{:#}", check_objects(&objects(text)).unwrap_err());
    // The valid one gets as far as the next check (there is no control Deployment here).
    assert!(
        err(DAEMONSET).contains("no Deployment sockmesh-control"),
        "{}",
        err(DAEMONSET)
    );
    let more = DAEMONSET.replace("SYS_PTRACE]", "SYS_PTRACE, SYS_MODULE]");
    assert!(err(&more).contains("adds exactly"), "{}", err(&more));
    let fewer = DAEMONSET.replace(", SYS_ADMIN, SYS_PTRACE]", "]");
    assert!(err(&fewer).contains("adds exactly"), "{}", err(&fewer));
    let privileged = DAEMONSET.replacen("privileged: false", "privileged: true", 2);
    assert!(
        err(&privileged).contains("privileged must be false"),
        "{}",
        err(&privileged)
    );
    let no_drop = DAEMONSET.replace("{drop: [ALL], add: [SYS_ADMIN]}", "{add: [SYS_ADMIN]}");
    assert!(
        err(&no_drop).contains("mount: must drop ALL"),
        "{}",
        err(&no_drop)
    );
}

#[test]
fn metrics_are_open_only_to_the_scraping_namespace() {
    let policies = |text: &str| -> Vec<Yaml> { text.split("\n---\n").map(yaml).collect() };
    let shipped_policy = read(&workspace::root().join("deploy/k8s/networkpolicy.yaml")).unwrap();
    check_metrics_ingress(&policies(&shipped_policy)).unwrap();
    let open = shipped_policy.replacen(
        "    - from:\n        - namespaceSelector:\n            matchLabels:\n              sockmesh.io/scrape: \"true\"\n      ports:",
        "    - ports:",
        1,
    );
    assert_ne!(open, shipped_policy, "the edit applies");
    let err = format!("{:#}", check_metrics_ingress(&policies(&open)).unwrap_err());
    assert!(err.contains("opens `metrics` to every pod"), "{err}");
}

#[test]
fn agent_has_no_api_access() {
    let daemonset = yaml(&DAEMONSET.replace(
        "kind: DaemonSet",
        "kind: DaemonSet\nmetadata: {name: sockmesh-agent}",
    ));
    let err = |objects: &[serde_yaml::Value]| format!("{:#}", check_objects(objects).unwrap_err());
    let token = yaml(
        &DAEMONSET
            .replace(
                "automountServiceAccountToken: false",
                "automountServiceAccountToken: true",
            )
            .replace(
                "kind: DaemonSet",
                "kind: DaemonSet\nmetadata: {name: sockmesh-agent}",
            ),
    );
    assert!(err(&[token]).contains("automountServiceAccountToken must be false"));
    let binding = yaml(
        "kind: ClusterRoleBinding\nmetadata: {name: sockmesh-agent}\nsubjects:\n  - {kind: \
         ServiceAccount, name: sockmesh-agent, namespace: sockmesh-system}\n",
    );
    let other = yaml(
        "kind: ClusterRoleBinding\nmetadata: {name: sockmesh-control}\nsubjects:\n  - {kind: \
         ServiceAccount, name: sockmesh-control, namespace: sockmesh-system}\n",
    );
    assert!(
        err(&[daemonset.clone(), binding]).contains("grants the agent's ServiceAccount"),
        "a binding of the agent's account must be refused"
    );
    // Another account's binding is fine: the check goes on to the next object.
    assert!(err(&[daemonset, other]).contains("no Deployment sockmesh-control"));
}

#[test]
fn checkov_verdict_counts_and_refuses_unexplained_skips() {
    let report = |failed: Json, comment: &str| {
        json!([
            {"check_type": "kubernetes", "summary": {"passed": 10, "skipped": 1, "parsing_errors": 0},
             "results": {"failed_checks": failed, "skipped_checks": [
                {"check_id": "CKV_K8S_17", "resource": "DaemonSet.x", "check_result": {"suppress_comment": comment}}]}},
            {"check_type": "dockerfile", "summary": {"passed": 5, "skipped": 0, "parsing_errors": 0},
             "results": {"failed_checks": [], "skipped_checks": []}}
        ])
    };
    let good = "hostPID: the sched tracepoints report global ids";
    assert_eq!(checkov_verdict(&report(json!([]), good)).unwrap(), (15, 1));
    let err = checkov_verdict(&report(json!([]), "No comment provided"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("CKV_K8S_17 is skipped on DaemonSet.x without a reason"),
        "{err}"
    );
    let failed = json!([{"check_id": "CKV_K8S_8", "check_name": "Liveness Probe Should be Configured",
                         "resource": "Deployment.y", "file_path": "/sockmesh.yaml"}]);
    let err = checkov_verdict(&report(failed, good))
        .unwrap_err()
        .to_string();
    assert!(err.contains("FAILED CKV_K8S_8"), "{err}");
    let err = checkov_verdict(&report(json!([]), good)[0].clone())
        .unwrap_err()
        .to_string();
    assert!(err.contains("nothing for dockerfile"), "{err}");
}

#[test]
fn missing_schema_warnings_are_recognised_per_kind() {
    let line = "WARN /x.yaml Couldn't find schema for kind ServiceMonitor with api version \
                monitoring.coreos.com/v1 for kubernetes version 1.37";
    assert!(is_missing_schema(line, "ServiceMonitor"));
    assert!(!is_missing_schema(line, "Service"));
    assert!(!is_missing_schema(
        "ERROR ... ServiceMonitor",
        "ServiceMonitor"
    ));
}

/// Everything `cargo xtask test` runs (skipped without the tools; `cargo xtask test` runs
/// setup first, which installs them, and fails then).
#[test]
fn shipped_manifests_pass_every_check() {
    if kubectl().is_err() || tool("kubernetes-validate").is_err() || tool("checkov").is_err() {
        eprintln!("skipped: kubectl, kubernetes-validate or checkov missing (cargo xtask setup)");
        return;
    }
    let summary = check(&workspace::root()).unwrap();
    println!("{summary}");
    assert!(summary.objects >= 15, "{summary:?}");
    assert!(
        summary.checkov_skipped > 0 && summary.checkov_passed > 100,
        "{summary:?}"
    );
}

/// The shipped DaemonSet and Deployment keep the control channel TLS: certificate from the
/// Secret, CA from the ConfigMap, no --insecure-plaintext; each way to break it is named.
#[test]
fn control_channel_is_tls_in_the_shipped_workloads() {
    let agent_text = read(&workspace::root().join("deploy/k8s/agent-daemonset.yaml")).unwrap();
    let control_text = read(&workspace::root().join("deploy/k8s/control-deployment.yaml")).unwrap();
    let check = |agent: &str, control: &str| {
        check_control_tls(&yaml(agent), &yaml(control)).map_err(|e| format!("{e:#}"))
    };
    check(&agent_text, &control_text).unwrap();

    let plain = agent_text.replace(
        "- --control-ca=/etc/sockmesh/control-ca/ca.crt",
        "- --insecure-plaintext",
    );
    let err = check(&plain, &control_text).unwrap_err();
    assert!(
        err.contains("agent runs with --insecure-plaintext"),
        "{err}"
    );
    let other_ca = agent_text.replace("name: sockmesh-control-ca", "name: some-other-ca");
    let err = check(&other_ca, &control_text).unwrap_err();
    assert!(err.contains("not sockmesh-control-ca"), "{err}");
    let unmounted = agent_text.replace("/etc/sockmesh/control-ca/ca.crt", "/tmp/ca.crt");
    let err = check(&unmounted, &control_text).unwrap_err();
    assert!(err.contains("nothing is mounted at /tmp/ca.crt"), "{err}");
    let no_tls = control_text.replace("- --tls-key=", "- --not-tls-key=");
    let err = check(&agent_text, &no_tls).unwrap_err();
    assert!(err.contains("--tls-key"), "{err}");
    let other_secret = control_text.replace("secretName: sockmesh-control-tls", "secretName: x");
    let err = check(&agent_text, &other_secret).unwrap_err();
    assert!(err.contains("not the Secret sockmesh-control-tls"), "{err}");
}

#[test]
fn each_agent_authenticates_as_its_node_not_with_a_shared_token() {
    let text = |p: &str| read(&workspace::root().join(p)).unwrap();
    let (agent, control) = (
        text("deploy/k8s/agent-daemonset.yaml"),
        text("deploy/k8s/control-deployment.yaml"),
    );
    let rbac = text("deploy/k8s/control-rbac.yaml");
    let objects = |rbac: &str| -> Vec<Yaml> { rbac.split("\n---\n").map(yaml).collect() };
    let check = |agent: &str, control: &str, rbac: &str| {
        check_node_identity(&objects(rbac), &yaml(agent), &yaml(control))
            .map_err(|e| format!("{e:#}"))
    };
    check(&agent, &control, &rbac).unwrap();

    let projected = "          projected:\n            defaultMode: 0400\n            sources:\n              - serviceAccountToken:\n                  audience: sockmesh-control\n                  expirationSeconds: 3600\n                  path: token";
    assert!(
        agent.contains(projected),
        "the shipped agent's token volume changed"
    );
    let shared = agent.replace(
        projected,
        "          secret:\n            secretName: sockmesh-control-token",
    );
    let err = check(&shared, &control, &rbac).unwrap_err();
    assert!(
        err.contains("not a projected ServiceAccount token"),
        "{err}"
    );
    let other_audience = agent.replace(
        "audience: sockmesh-control",
        "audience: https://kubernetes.default.svc",
    );
    assert!(check(&other_audience, &control, &rbac).is_err());
    let long_lived = agent.replace("expirationSeconds: 3600", "expirationSeconds: 86400");
    let err = check(&long_lived, &control, &rbac).unwrap_err();
    assert!(err.contains("at most 3600"), "{err}");
    let no_review = control.replace("            - --kube-token-review\n", "");
    assert_ne!(no_review, control);
    let err = check(&agent, &no_review, &rbac).unwrap_err();
    assert!(err.contains("without --kube-token-review"), "{err}");
    let no_rbac = rbac.replace("tokenreviews", "subjectaccessreviews");
    let err = check(&agent, &control, &no_rbac).unwrap_err();
    assert!(err.contains("cannot create tokenreviews"), "{err}");
}

/// The shipped objects as kustomize lists them (without kubectl: each file already names its
/// namespace), with `edit` applied to the text of `file`.
fn shipped_objects(file: &str, edit: impl Fn(&str) -> String) -> Vec<Yaml> {
    let root = workspace::root();
    let kustomization = shipped("deploy/kustomization.yaml");
    let mut objects = Vec::new();
    for res in kustomization["resources"].as_sequence().unwrap() {
        let path = format!("deploy/{}", res.as_str().unwrap());
        let mut text = read(&root.join(&path)).unwrap();
        if path == file {
            let edited = edit(&text);
            assert_ne!(edited, text, "the edit of {file} applies");
            text = edited;
        }
        objects.extend(text.split("\n---\n").map(yaml).filter(|o| !o.is_null()));
    }
    objects
}

#[test]
fn every_service_monitor_port_is_on_what_it_selects() {
    check_objects(&shipped_objects("", str::to_owned)).unwrap();
    let err = |file: &str, from: &str, to: &str| {
        let objects = shipped_objects(file, |t| t.replacen(from, to, 1));
        format!("{:#}", check_objects(&objects).unwrap_err())
    };
    // The proxy's port gone from the agents' Service.
    let e = err(
        "deploy/k8s/agent-service.yaml",
        "    - name: proxy-metrics\n",
        "    - name: proxy-stats\n",
    );
    assert!(
        e.contains("ServiceMonitor sockmesh-proxy: Service sockmesh-agent-metrics has no port named proxy-metrics"),
        "{e}"
    );
    // The proxy's monitor widened to the control plane's Service, which has no such port.
    let e = err(
        "deploy/k8s/servicemonitor.yaml",
        "      app.kubernetes.io/name: sockmesh-agent\n",
        "",
    );
    assert!(
        e.contains("Service sockmesh-control has no port named proxy-metrics"),
        "{e}"
    );
    // The proxy's metrics in the rule that admits every namespace's pods.
    let e = err(
        "deploy/k8s/networkpolicy.yaml",
        "        - port: proxy\n",
        "        - port: proxy\n        - port: proxy-metrics\n",
    );
    assert!(
        e.contains("NetworkPolicy sockmesh-agent opens `proxy-metrics` to every pod"),
        "{e}"
    );
}
