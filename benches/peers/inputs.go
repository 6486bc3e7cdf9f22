// Package peers measures the engines registry-gate's peers run for the same question, "does
// every image of this Pod start with a registered registry?": OPA's Rego (what Gatekeeper
// evaluates) and CEL (what kube-apiserver evaluates for a ValidatingAdmissionPolicy).
//
// The inputs are generated here and by benches/peers.rs in the same way, entry for entry, so
// both sides decide the same Pod against the same registries. Run everything with
// benches/peers/run.sh (`make bench-peers`); figures are in benches/RESULTS.md.
package peers

import (
	"encoding/json"
	"fmt"
)

// Sizes are the policy sizes compared (registries in the list).
var Sizes = []int{10, 1_000, 10_000}

const digest = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

// EntryURL is entry i of a policy, shaped like benches/decision.rs: GHCR owners, ECR accounts,
// self-hosted registries with ports and Harbor projects, in turn.
func EntryURL(i int) string {
	switch i % 4 {
	case 0:
		return fmt.Sprintf("ghcr.io/org%d", i)
	case 1:
		return fmt.Sprintf("%012d.dkr.ecr.us-east-1.amazonaws.com", i)
	case 2:
		return fmt.Sprintf("registry%d.corp.example:5000", i)
	default:
		return fmt.Sprintf("harbor.corp.example/team%d", i)
	}
}

// Repos is the peers' form of a policy of size entries: prefixes ending in "/", as the
// k8sallowedrepos documentation asks, so that ghcr.io/org1 does not also admit ghcr.io/org10.
func Repos(size int) []string {
	repos := make([]string, size)
	for i := range repos {
		repos[i] = EntryURL(i) + "/"
	}
	return repos
}

// PodImages are the Pod's images: one from each kind of entry, taken from the middle of the
// list (a scan must pass half the entries to find them), then one from no entry at all (a scan
// must pass every entry to refuse it).
func PodImages(size int) []string {
	mid := (size / 2) &^ 3 // a GHCR entry, so the four kinds follow in order
	return []string{
		fmt.Sprintf("ghcr.io/org%d/service:1.4", mid),
		fmt.Sprintf("%012d.dkr.ecr.us-east-1.amazonaws.com/app@%s", mid+1, digest),
		fmt.Sprintf("registry%d.corp.example:5000/team/app:7", mid+2),
		fmt.Sprintf("harbor.corp.example/team%d/job:latest", mid+3),
		"quay.io/unknown/app:1",
	}
}

// Allowed is how many of PodImages are admitted; the last one is refused.
const Allowed = 4

// Pod is the Pod object as an admission controller holds it once the review is decoded: the
// generic JSON tree (Gatekeeper's unstructured object, the API server's for CEL). Decoding is
// done here, outside the measured loop, on both peers.
func Pod(size int) map[string]any {
	type container struct {
		Name  string `json:"name"`
		Image string `json:"image"`
	}
	containers := []container{}
	for i, image := range PodImages(size) {
		containers = append(containers, container{Name: fmt.Sprintf("c%d", i), Image: image})
	}
	raw, err := json.Marshal(map[string]any{
		"apiVersion": "v1",
		"kind":       "Pod",
		"metadata":   map[string]any{"name": "web", "namespace": "default", "labels": map[string]string{"app": "web"}},
		"spec":       map[string]any{"containers": containers},
	})
	if err != nil {
		panic(err)
	}
	var pod map[string]any
	if err := json.Unmarshal(raw, &pod); err != nil {
		panic(err)
	}
	return pod
}

// anyStrings is a list as encoding/json decodes it, the form the engines receive parameters in.
func anyStrings(list []string) []any {
	out := make([]any, len(list))
	for i, s := range list {
		out[i] = s
	}
	return out
}
