//! The policy as admins meet it: the bundled examples, the published JSON Schema, and the errors
//! a broken policy gets.

use registry_gate::policy::{Decision, Denial, Namespace, Policy, RegistryType};

fn repo_file(path: &str) -> String {
    std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR")))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

const EXAMPLES: [&str; 2] = ["policy/example-all-types.yaml", "policy/default.yaml"];

#[test]
fn bundled_examples_are_valid() {
    for path in EXAMPLES {
        let policy = Policy::parse(&repo_file(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert!(!policy.registries.is_empty(), "{path}");
    }
}

#[test]
fn the_full_example_covers_every_registry_type() {
    let policy = Policy::parse(&repo_file(EXAMPLES[0])).expect("valid example");
    for registry_type in RegistryType::ALL {
        assert!(
            policy.registries.iter().any(|r| r.registry_type == registry_type),
            "the full example has no {registry_type} registry"
        );
    }
}

fn schema() -> jsonschema::Validator {
    let schema: serde_json::Value =
        serde_json::from_str(&repo_file("policy/schema.json")).expect("schema is JSON");
    jsonschema::validator_for(&schema).expect("schema compiles")
}

fn as_json(yaml: &str) -> serde_json::Value {
    registry_gate::yaml::parse_documents(yaml).expect("YAML")[0].to_json()
}

#[test]
fn examples_fit_the_published_schema() {
    let schema = schema();
    for path in EXAMPLES {
        let document = as_json(&repo_file(path));
        let errors: Vec<String> = schema.iter_errors(&document).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{path}: {errors:?}");
    }
}

#[test]
fn schema_lists_exactly_the_registry_types() {
    let schema: serde_json::Value =
        serde_json::from_str(&repo_file("policy/schema.json")).expect("schema is JSON");
    let listed: Vec<&str> = schema["$defs"]["registry"]["properties"]["type"]["enum"]
        .as_array()
        .expect("an enum")
        .iter()
        .filter_map(|t| t.as_str())
        .collect();
    let known: Vec<&str> = RegistryType::ALL.iter().map(|t| t.name()).collect();
    assert_eq!(listed, known);
}

const BROKEN: &str = r#"apiVersion: registry-gate.io/v1
kind: RegistryPolicy
mode: enforcing
registries:
  - name: team-ghcr
    type: GHCR
    url: ghcr.io/acme
  - name: team-ghcr
    type: ghcr
    url: ghcr.io/acme
  - name: wide-open
    type: Generic
    url: "*"
  - name: wrong-ecr
    type: ECR
    url: 123456789012.dkr.ecr.us-east-1.amazonaws.co
  - name: anonymous
    type: Public
    url: quay.io/public
    pullSecret: should-not-be-here
  - name: typo
    type: Quay
    url: quay.io/acme
    pullsecret: quay-robot
    namespaces: []
"#;

#[test]
fn every_problem_is_reported_at_once_with_its_line() {
    let error = Policy::parse(BROKEN).expect_err("the policy is broken");
    let found: Vec<(String, Option<usize>)> =
        error.problems.iter().map(|p| (p.field.clone(), p.line)).collect();
    let expected = [
        ("mode", 3),
        ("registries[1].type", 9),
        ("registries[2].url", 13),
        ("registries[3].url", 16),
        ("registries[4].pullSecret", 20),
        ("registries[5].pullsecret", 24),
        ("registries[5].namespaces", 25),
        ("registries[1].name", 8),
    ];
    for (field, line) in expected {
        assert!(
            found.contains(&(field.to_owned(), Some(line))),
            "missing {field} at line {line} in {found:?}"
        );
    }
    let text = error.to_string();
    assert!(text.contains("did you mean \"GHCR\""), "{text}");
    assert!(text.contains("did you mean \"pullSecret\""), "{text}");
    assert!(text.contains("does not fit type ECR"), "{text}");
    // The duplicate URL of registries[1] is refused too, even though its type is misspelled.
    let schema = schema();
    assert!(!schema.is_valid(&as_json(BROKEN)), "the schema refuses it as well");
}

#[test]
fn allow_everything_urls_are_refused() {
    for url in ["\"\"", "\"*\"", "\"  \"", "\"https://*\"", "\"*.io\""] {
        let text = format!(
            "apiVersion: registry-gate.io/v1\nkind: RegistryPolicy\nregistries:\n  - name: a\n    type: Generic\n    url: {url}\n"
        );
        let error = Policy::parse(&text).expect_err(url);
        assert_eq!(error.problems[0].field, "registries[0].url", "{url}: {error}");
    }
}

#[test]
fn not_yaml_is_one_clear_problem() {
    let error = Policy::parse("registries: [\n").expect_err("unclosed");
    assert_eq!(error.problems.len(), 1);
    assert!(error.to_string().contains("not valid YAML"), "{error}");
}

fn policy_with(body: &str) -> Result<Policy, registry_gate::policy::PolicyError> {
    Policy::parse(&format!("apiVersion: registry-gate.io/v1\nkind: RegistryPolicy\n{body}"))
}

fn decision(policy: &Policy, image: &str) -> String {
    match policy.check(image, &Namespace::named("shop")).1 {
        Decision::Allowed(registry) => format!("allowed by {}", registry.name),
        Decision::Denied(Denial::DenyListed(rule)) => format!("denied by {}", rule.url),
        Decision::Denied(other) => format!("denied: {other:?}"),
        Decision::Excepted(exception, _) => format!("excepted ({})", exception.reason),
    }
}

#[test]
fn match_everything_exemptions_and_scopes_are_refused() {
    for patterns in ["['*']", "['?*']", "['**']", "['*?*']", "[shop, '*']"] {
        let error =
            policy_with(&format!("exemptNamespaces: {patterns}\nregistries: []\n")).expect_err(patterns);
        assert!(error.to_string().contains("switch the policy off"), "{patterns}: {error}");
        let scoped = format!(
            "registries:\n  - {{name: hub, type: Public, url: docker.io/library, namespaces: {patterns}}}\n"
        );
        let error = policy_with(&scoped).expect_err(patterns);
        assert!(error.to_string().contains("leave `namespaces` out"), "{patterns}: {error}");
    }
    // Patterns with a literal part are scopes, not switches.
    assert!(policy_with("exemptNamespaces: [kube-*, 'team-?']\nregistries: []\n").is_ok());
}

#[test]
fn a_wildcard_entry_with_a_pull_secret_is_a_warning() {
    let policy = policy_with(
        "registries:\n  - {name: acr, type: ACR, url: '*.azurecr.io', pullSecret: acr}\n  - {name: one, type: ACR, url: acmecorp.azurecr.io, pullSecret: one}\n",
    )
    .expect("valid, with a warning");
    assert_eq!(policy.warnings.len(), 1, "{:?}", policy.warnings);
    let warning = policy.warnings[0].to_string();
    assert!(warning.contains("registries[0].pullSecret") && warning.contains("other tenants"), "{warning}");
}

#[test]
fn a_wildcard_over_docker_hub_aliases_covers_docker_hub() {
    let policy = policy_with(
        "registries:\n  - {name: hub, type: Public, url: docker.io}\ndeny:\n  - url: '*.docker.io'\n",
    )
    .expect("valid");
    for image in
        ["nginx", "docker.io/library/nginx", "index.docker.io/library/nginx", "registry-1.docker.io/x/y"]
    {
        assert_eq!(decision(&policy, image), "denied by *.docker.io", "{image}");
    }
}

#[test]
fn deny_rules_on_docker_hub_still_cover_short_names_pulled_from_a_mirror() {
    let policy = policy_with(
        "shortNameRegistry: mirror.example.com\nregistries:\n  - {name: mirror, type: Generic, url: mirror.example.com}\ndeny:\n  - url: docker.io/library/busybox\n",
    )
    .expect("valid");
    assert_eq!(decision(&policy, "busybox"), "denied by docker.io/library/busybox");
    assert_eq!(decision(&policy, "busybox:1.36"), "denied by docker.io/library/busybox");
    assert_eq!(decision(&policy, "nginx"), "allowed by mirror");
    // Written with the mirror's host, the image is the mirror's, and only the mirror's rules apply.
    assert_eq!(decision(&policy, "mirror.example.com/library/busybox"), "allowed by mirror");
}

#[test]
fn public_suffix_wildcards_are_refused_with_their_line() {
    let error =
        policy_with("registries:\n  - {name: uk, type: Generic, url: '*.co.uk'}\n").expect_err("too broad");
    let text = error.to_string();
    assert!(text.contains("line 4") && text.contains("co.uk is a public suffix"), "{text}");
}

#[test]
fn kubelet_credentials_take_no_pull_secret() {
    let policy = policy_with(
        "registries:\n  - {name: ecr, type: ECR, url: 123456789012.dkr.ecr.us-east-1.amazonaws.com, credentials: kubelet}\n",
    )
    .expect("valid");
    assert!(policy.registries[0].node_credentials && policy.registries[0].pull_secret.is_none());
    let error = policy_with(
        "registries:\n  - {name: ecr, type: ECR, url: 123456789012.dkr.ecr.us-east-1.amazonaws.com, credentials: kubelet, pullSecret: ecr}\n",
    )
    .expect_err("both");
    assert!(error.to_string().contains("leave pullSecret out"), "{error}");
    let error = policy_with("registries:\n  - {name: ecr, type: ECR, url: 123456789012.dkr.ecr.us-east-1.amazonaws.com, credentials: node}\n")
        .expect_err("unknown value");
    assert!(error.to_string().contains("registries[0].credentials"), "{error}");
    let document = as_json(
        "apiVersion: registry-gate.io/v1\nkind: RegistryPolicy\nregistries:\n  - {name: ecr, type: ECR, url: 123456789012.dkr.ecr.us-east-1.amazonaws.com, credentials: kubelet, pullSecret: ecr}\n",
    );
    assert!(!schema().is_valid(&document), "the schema refuses both too");
}

const SCOPED_BY_LABELS: &str = "registries:
  - name: payments
    type: GHCR
    url: ghcr.io/acme-payments
    pullSecret: ghcr-payments
    namespaces: ['shop-*', shop]
    namespaceSelector:
      matchLabels: {team: payments}
      matchExpressions:
        - {key: env, operator: NotIn, values: [sandbox]}
";

fn labels(pairs: &[(&str, &str)]) -> registry_gate::policy::Labels {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

#[test]
fn a_namespace_selector_scopes_a_registry_by_labels_and_names() {
    let policy = policy_with(SCOPED_BY_LABELS).expect("valid");
    assert!(policy.uses_namespace_labels());
    let image = "ghcr.io/acme-payments/api:1";
    let decide = |name: &str, labels: Option<&registry_gate::policy::Labels>| {
        let namespace = Namespace { name, labels };
        let (reference, decision) = policy.check(image, &namespace);
        match decision {
            Decision::Allowed(registry) => format!("allowed by {}", registry.name),
            Decision::Denied(denial) => policy.denial_message(reference.as_ref(), &denial, &namespace),
            Decision::Excepted(exception, _) => format!("excepted ({})", exception.reason),
        }
    };
    let payments = labels(&[("team", "payments")]);
    assert_eq!(decide("shop", Some(&payments)), "allowed by payments");
    assert_eq!(
        decide("shop-eu", Some(&labels(&[("team", "payments"), ("env", "prod")]))),
        "allowed by payments"
    );
    // Both the name and the labels must fit.
    let refused = decide("search", Some(&payments));
    assert!(refused.contains("may not be used in namespace \"search\""), "{refused}");
    assert!(
        refused.contains("it admits namespaces shop-*, shop labelled team=payments,env notin (sandbox)"),
        "{refused}"
    );
    assert!(decide("shop", Some(&labels(&[("team", "search")]))).contains("may not be used"));
    assert!(
        decide("shop", Some(&labels(&[("team", "payments"), ("env", "sandbox")])))
            .contains("may not be used")
    );
    // Unknown labels admit nothing, and the message says why.
    let unknown = decide("shop", None);
    assert!(unknown.contains("labels are not known"), "{unknown}");
    // A policy without selectors never needs labels.
    assert!(
        !policy_with("registries:\n  - {name: hub, type: Public, url: docker.io/library}\n")
            .expect("valid")
            .uses_namespace_labels()
    );
}

#[test]
fn a_broken_namespace_selector_is_refused_with_its_field_path() {
    let cases = [
        ("namespaceSelector: {}", "registries[0].namespaceSelector: selects every namespace"),
        ("namespaceSelector: {matchLabels: {}}", "selects every namespace"),
        (
            "namespaceSelector: {matchLabels: {'-team': x}}",
            "registries[0].namespaceSelector.matchLabels.-team",
        ),
        ("namespaceSelector: {matchLabels: {team: 'not ok'}}", "is not a label value"),
        ("namespaceSelector: {matchLabels: {team: [a]}}", "maps label keys to string values"),
        ("namespaceSelector: {matchLables: {team: a}}", "did you mean \"matchLabels\""),
        (
            "namespaceSelector: {matchExpressions: [{key: env, operator: In}]}",
            "matchExpressions[0].values: must name at least one value for In",
        ),
        (
            "namespaceSelector: {matchExpressions: [{key: env, operator: Exists, values: [a]}]}",
            "must be left out for Exists",
        ),
        (
            "namespaceSelector: {matchExpressions: [{key: env, operator: in, values: [a]}]}",
            "it is In, NotIn, Exists or DoesNotExist",
        ),
        (
            "namespaceSelector: {matchExpressions: [{operator: Exists}]}",
            "matchExpressions[0].key: is required",
        ),
        ("namespaceSelector: [team]", "registries[0].namespaceSelector: must be a mapping"),
    ];
    for (selector, expected) in cases {
        let text = format!(
            "registries:\n  - name: hub\n    type: Public\n    url: docker.io/library\n    {selector}\n"
        );
        let error = policy_with(&text).expect_err(selector).to_string();
        assert!(error.contains(expected), "{selector}: expected {expected:?} in:\n{error}");
    }
}

#[test]
fn an_exact_entry_admits_its_repository_and_nothing_under_it() {
    let policy = policy_with(
        "registries:\n  - {name: nginx-only, type: Public, url: docker.io/library/nginx, match: exact}\n  - {name: acme, type: GHCR, url: ghcr.io/acme}\n  - {name: acme-app, type: GHCR, url: ghcr.io/acme/app, match: exact, namespaces: [prod]}\n",
    )
    .expect("valid");
    assert_eq!(decision(&policy, "nginx:1.27"), "allowed by nginx-only");
    assert_eq!(decision(&policy, "index.docker.io/library/nginx:1"), "allowed by nginx-only");
    assert!(decision(&policy, "docker.io/library/nginx/extra:1").contains("Unregistered"));
    assert!(decision(&policy, "docker.io/library/nginx-evil:1").contains("Unregistered"));
    // The exact entry is the most specific: its namespace scope applies to that repository,
    // and paths under it fall back to the broader entry.
    assert!(decision(&policy, "ghcr.io/acme/app:1").contains("NamespaceNotAllowed"));
    assert_eq!(decision(&policy, "ghcr.io/acme/app/worker:1"), "allowed by acme");
    assert_eq!(decision(&policy, "ghcr.io/acme/other:1"), "allowed by acme");
}

#[test]
fn exact_needs_one_repository_on_one_host() {
    for (url, want) in [
        ("docker.io", "registries[0].match: is exact, which needs a url naming one repository"),
        ("'*.corp.example/app'", "registries[0].match: is exact"),
    ] {
        let error =
            policy_with(&format!("registries:\n  - {{name: r, type: Generic, url: {url}, match: exact}}\n"))
                .expect_err("refused");
        assert!(error.to_string().contains(want), "{url}: {error}");
    }
    let error =
        policy_with("registries:\n  - {name: r, type: Generic, url: corp.example/app, match: exactly}\n")
            .expect_err("refused");
    assert!(error.to_string().contains("registries[0].match: is \"exactly\"; it is \"prefix\""), "{error}");
}

#[test]
fn tag_rules_refuse_moving_tags_and_unpinned_images_per_registry_or_policy_wide() {
    let digest = "sha256:".to_owned() + &"a".repeat(64);
    let policy = policy_with(
        "tagRules: {denyLatest: true}\nregistries:\n  - {name: hub, type: Public, url: docker.io/library}\n  - {name: prod, type: GHCR, url: ghcr.io/acme/prod, tagRules: {requireDigest: true}}\n  - {name: dev, type: GHCR, url: ghcr.io/acme/dev, tagRules: {denyLatest: false}}\n",
    )
    .expect("valid");
    let decide = |image: &str| {
        let namespace = Namespace::named("shop");
        let (reference, decision) = policy.check(image, &namespace);
        match decision {
            Decision::Allowed(registry) => format!("allowed by {}", registry.name),
            Decision::Denied(denial) => policy.denial_message(reference.as_ref(), &denial, &namespace),
            Decision::Excepted(exception, _) => format!("excepted ({})", exception.reason),
        }
    };
    assert_eq!(decide("nginx:1.27"), "allowed by hub");
    let latest = decide("nginx:latest");
    assert!(latest.contains("docker.io/library/nginx:latest pulls the moving tag latest"), "{latest}");
    assert!(latest.contains("registry \"hub\" (docker.io/library) refuses"), "{latest}");
    assert!(decide("nginx").contains("pulls the moving tag latest"), "no tag pulls latest");
    assert_eq!(decide(&format!("nginx:latest@{digest}")), "allowed by hub", "a digest pins it");
    // Per registry: prod requires a digest and still denies latest (policy-wide); dev allows latest.
    let unpinned = decide("ghcr.io/acme/prod/api:2");
    assert!(unpinned.contains("is not pinned by a digest, which registry \"prod\""), "{unpinned}");
    assert_eq!(decide(&format!("ghcr.io/acme/prod/api:2@{digest}")), "allowed by prod");
    assert_eq!(decide("ghcr.io/acme/dev/api:latest"), "allowed by dev");
    assert_eq!(decide("ghcr.io/acme/dev/api"), "allowed by dev");
    // Broken rules are refused with their field path.
    for (body, want) in [
        ("tagRules: {denyLatest: yes}\nregistries: []\n", "tagRules.denyLatest: must be true or false"),
        ("tagRules: {}\nregistries: []\n", "tagRules: sets no rule"),
        (
            "registries:\n  - {name: r, type: Generic, url: corp.example, tagRules: {pinned: true}}\n",
            "registries[0].tagRules.pinned: is not a known field",
        ),
    ] {
        let error = policy_with(body).expect_err("refused");
        assert!(error.to_string().contains(want), "{body}: {error}");
    }
}

const EXCEPTIONS: &str = "registries:
  - {name: hub, type: Public, url: docker.io/library}
  - {name: prod, type: GHCR, url: ghcr.io/acme/prod, pullSecret: ghcr-prod, tagRules: {requireDigest: true}}
deny:
  - {url: docker.io/library/busybox}
exceptions:
  - {image: 'quay.io/vendor/legacy:1.2', namespaces: [shop], expires: '2999-12-31', reason: OPS-1 vendor migration}
  - {repository: docker.io/library/busybox, expires: '2999-12-31', reason: OPS-2 debugging}
  - {namespaces: ['migrating-*'], expires: '2999-12-31', reason: OPS-3 onboarding}
  - {repository: ghcr.io/acme/prod/api, expires: '2999-12-31', reason: OPS-4 pinning soon}
  - {repository: quay.io/vendor/old, expires: '2001-01-01', reason: OPS-0 long gone}
";

#[test]
fn exceptions_admit_until_their_date_and_say_so() {
    let policy = policy_with(EXCEPTIONS).expect("valid");
    let decide = |image: &str, namespace: &str| {
        let namespace = Namespace::named(namespace);
        let (reference, decision) = policy.check(image, &namespace);
        match decision {
            Decision::Allowed(registry) => format!("allowed by {}", registry.name),
            Decision::Excepted(exception, registry) => {
                format!(
                    "excepted ({}) secret {:?}",
                    exception.reason,
                    registry.and_then(|r| r.pull_secret.clone())
                )
            }
            Decision::Denied(denial) => policy.denial_message(reference.as_ref(), &denial, &namespace),
        }
    };
    // One image, in its namespaces only, written in any spelling of the same reference.
    assert_eq!(decide("quay.io/vendor/legacy:1.2", "shop"), "excepted (OPS-1 vendor migration) secret None");
    assert!(decide("quay.io/vendor/legacy:1.3", "shop").contains("not in any registered registry"));
    assert!(decide("quay.io/vendor/legacy:1.2", "blog").contains("not in any registered registry"));
    // A repository, every tag, over a deny rule, short names included.
    assert_eq!(decide("busybox:1.36", "blog"), "excepted (OPS-2 debugging) secret None");
    assert_eq!(decide("docker.io/library/busybox", "blog"), "excepted (OPS-2 debugging) secret None");
    // Namespaces: every image there.
    assert_eq!(decide("evil.example/x:1", "migrating-crm"), "excepted (OPS-3 onboarding) secret None");
    // A tag rule excepted keeps the registry's pull secret, or the Pod could not pull.
    assert_eq!(
        decide("ghcr.io/acme/prod/api:2", "shop"),
        "excepted (OPS-4 pinning soon) secret Some(\"ghcr-prod\")"
    );
    assert!(decide("ghcr.io/acme/prod/web:2", "shop").contains("not pinned by a digest"));
    // Expired: denied again, and the denial says why.
    let expired = decide("quay.io/vendor/old:3", "shop");
    assert!(expired.contains("not in any registered registry"), "{expired}");
    assert!(expired.contains("(an exception for it expired after 2001-01-01: OPS-0 long gone)"), "{expired}");
    // Loading warns about the expired one, with its line.
    let warning = policy.warnings.iter().find(|w| w.field == "exceptions[4].expires").expect("a warning");
    assert!(warning.message.contains("2001-01-01 has passed"), "{warning}");
    assert_eq!(warning.line, Some(13));
    // Adding an exception is a weakening the door reports.
    let before =
        policy_with("registries:\n  - {name: hub, type: Public, url: docker.io/library}\n").expect("valid");
    let weakened = before.weakenings(&policy).join("; ");
    assert!(weakened.contains("admits image quay.io/vendor/legacy:1.2 in namespaces shop by exception until 2999-12-31 (OPS-1 vendor migration)"), "{weakened}");
    assert!(weakened.contains("admits every image in namespaces migrating-* by exception"), "{weakened}");
}

#[test]
fn a_broken_exception_is_refused_with_its_field_path() {
    for (exception, want) in [
        ("{image: 'x:1', expires: '2999-01-01'}", "exceptions[0].reason: is required"),
        ("{image: 'x:1', reason: r}", "exceptions[0].expires: is required"),
        (
            "{image: 'x:1', expires: '31/12/2999', reason: r}",
            "exceptions[0].expires: \"31/12/2999\" is not a date as YYYY-MM-DD",
        ),
        ("{image: 'x:1', expires: '2999-02-30', reason: r}", "is not a calendar date"),
        ("{expires: '2999-01-01', reason: r}", "exceptions[0]: admits nothing"),
        (
            "{image: 'x:1', repository: quay.io/x, expires: '2999-01-01', reason: r}",
            "names both an image and a repository",
        ),
        ("{repository: '*.corp.example/x', expires: '2999-01-01', reason: r}", "must name one repository"),
        ("{namespaces: ['*'], expires: '2999-01-01', reason: r}", "matches every namespace"),
        (
            "{image: 'acme/App:1', expires: '2999-01-01', reason: r}",
            "exceptions[0].image: \"acme/App:1\" is not an image reference",
        ),
        ("{image: 'x:1', expires: '2999-01-01', reason: '  '}", "exceptions[0].reason: is empty"),
        (
            "{image: 'x:1', expires: '2999-01-01', reason: r, ticket: 1}",
            "exceptions[0].ticket: is not a known field",
        ),
    ] {
        let error =
            policy_with(&format!("registries: []\nexceptions:\n  - {exception}\n")).expect_err(exception);
        assert!(error.to_string().contains(want), "{exception}: {error}");
    }
}
