//! The policies and images of the decision benchmark (`benches/decision.rs`), shared with
//! `examples/decision_instructions.rs` so that its instruction counts are of the same workload.

/// A policy of `size` registries shaped like a large organization's: many GHCR owners, ECR
/// accounts, self-hosted registries with ports and Harbor projects, plus the usual fixed entries.
pub fn policy_text(size: usize) -> String {
    let mut text = String::from(
        "apiVersion: registry-gate.io/v1\nkind: RegistryPolicy\nregistries:\n\
         - {name: hub, type: Public, url: docker.io/library}\n\
         - {name: acr, type: ACR, url: \"*.azurecr.io\", pullSecret: acr}\n",
    );
    for i in 0..size.saturating_sub(2) {
        let (kind, url) = entry_url(i);
        text += &format!("- {{name: r{i}, type: {kind}, url: \"{url}\", pullSecret: s{i}}}\n");
    }
    text += "deny:\n- {url: docker.io/library/busybox}\n";
    text
}

pub fn entry_url(i: usize) -> (&'static str, String) {
    match i % 4 {
        0 => ("GHCR", format!("ghcr.io/org{i}")),
        1 => ("ECR", format!("{:012}.dkr.ecr.us-east-1.amazonaws.com", i)),
        2 => ("Generic", format!("registry{i}.corp.example:5000")),
        _ => ("Harbor", format!("harbor.corp.example/team{i}")),
    }
}

/// A realistic mix: allowed images from entries spread over the policy, Docker Hub short names,
/// digests, and denied images (unregistered hosts, look-alike owners, a deny-listed image).
pub fn images(size: usize) -> Vec<String> {
    let digest = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    let mut images = vec![
        "nginx".to_owned(),
        "nginx:1.27".to_owned(),
        format!("docker.io/library/redis@{digest}"),
        "busybox:1.36".to_owned(),
        "acme.azurecr.io/api:v2".to_owned(),
        "quay.io/unknown/app:1".to_owned(),
        "evil.example.com/miner".to_owned(),
    ];
    let entries = size.saturating_sub(2).max(1);
    for k in 0..25 {
        let i = (k * 7919) % entries;
        let image = match i % 4 {
            0 => format!("ghcr.io/org{i}/service-{k}:1.{k}"),
            1 => format!("{:012}.dkr.ecr.us-east-1.amazonaws.com/app@{digest}", i),
            2 => format!("registry{i}.corp.example:5000/team/app:{k}"),
            _ => format!("harbor.corp.example/team{i}/job:latest"),
        };
        images.push(image);
        if k % 3 == 0 {
            images.push(format!("ghcr.io/org{i}-evil/app:1"));
        }
    }
    images
}
