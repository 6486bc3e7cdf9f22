package peers

import (
	"context"
	"fmt"
	"testing"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/rego"
)

// allowedRepos is the violation rule of Gatekeeper's k8sallowedrepos template
// (gatekeeper-library, library/general/allowedrepos), EQUIVALENT WRITTEN HERE: the library is
// not a Go module, so its text is not fetched. The logic is the library's: for each container,
// init container and ephemeral container, collect startswith(image, repo) over every repo, and
// report a violation, with a message listing the repos, when none is true. Like the library's
// text it is Rego v0 syntax, which Gatekeeper evaluates templates in.
const allowedRepos = `package k8sallowedrepos

violation[{"msg": msg}] {
  container := input.review.object.spec.containers[_]
  matches := [m | repo = input.parameters.repos[_]; m = startswith(container.image, repo)]
  not any(matches)
  msg := sprintf("container <%v> has an invalid image repo <%v>, allowed repos are %v", [container.name, container.image, input.parameters.repos])
}

violation[{"msg": msg}] {
  container := input.review.object.spec.initContainers[_]
  matches := [m | repo = input.parameters.repos[_]; m = startswith(container.image, repo)]
  not any(matches)
  msg := sprintf("initContainer <%v> has an invalid image repo <%v>, allowed repos are %v", [container.name, container.image, input.parameters.repos])
}

violation[{"msg": msg}] {
  container := input.review.object.spec.ephemeralContainers[_]
  matches := [m | repo = input.parameters.repos[_]; m = startswith(container.image, repo)]
  not any(matches)
  msg := sprintf("ephemeralContainer <%v> has an invalid image repo <%v>, allowed repos are %v", [container.name, container.image, input.parameters.repos])
}
`

// prepareRego compiles the rule and prepares the query once, as Gatekeeper does when a
// template is added; only Eval is measured.
func prepareRego(b *testing.B) rego.PreparedEvalQuery {
	query, err := rego.New(
		rego.Query("data.k8sallowedrepos.violation"),
		rego.Module("k8sallowedrepos.rego", allowedRepos),
		rego.SetRegoVersion(ast.RegoV0),
	).PrepareForEval(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	return query
}

// checkViolations fails the benchmark unless exactly the refused image was reported.
// measureEval checks one evaluation's answer, then times evaluations alone.
func measureEval(b *testing.B, eval func() rego.ResultSet) {
	b.Helper()
	checkViolations(b, eval())
	b.ResetTimer()
	for b.Loop() {
		eval()
	}
}

func checkViolations(b *testing.B, results rego.ResultSet) {
	b.Helper()
	if len(results) != 1 || len(results[0].Expressions) != 1 {
		b.Fatalf("unexpected result set %v", results)
	}
	violations, ok := results[0].Expressions[0].Value.([]any)
	if !ok || len(violations) != len(PodImages(10))-Allowed {
		b.Fatalf("want %d violation, got %v", len(PodImages(10))-Allowed, results[0].Expressions[0].Value)
	}
}

// BenchmarkRego is one review of the Pod: the review (the decoded Pod) is converted to OPA's
// values on every Eval, as it must be for each request; the constraint's parameters (the repo
// list) are converted once, as if cached with the constraint. This is the engine's cost with the
// per-request work a caller cannot avoid, and a lower bound for Gatekeeper.
func BenchmarkRego(b *testing.B) {
	for _, size := range Sizes {
		b.Run(fmt.Sprintf("size=%d", size), func(b *testing.B) {
			query := prepareRego(b)
			pod := Pod(size)
			parameters, err := ast.InterfaceToValue(map[string]any{"repos": anyStrings(Repos(size))})
			if err != nil {
				b.Fatal(err)
			}
			ctx := context.Background()
			eval := func() rego.ResultSet {
				review, err := ast.InterfaceToValue(map[string]any{"object": pod})
				if err != nil {
					b.Fatal(err)
				}
				input := ast.NewObject(
					ast.Item(ast.StringTerm("review"), ast.NewTerm(review)),
					ast.Item(ast.StringTerm("parameters"), ast.NewTerm(parameters)),
				)
				results, err := query.Eval(ctx, rego.EvalParsedInput(input))
				if err != nil {
					b.Fatal(err)
				}
				return results
			}
			measureEval(b, eval)
		})
	}
}

// BenchmarkRegoInput is the same review with the whole input, parameters included, handed over
// as Go values (rego.EvalInput) and converted by OPA on every Eval: the shape of input Gatekeeper
// builds per constraint ({review, parameters}).
func BenchmarkRegoInput(b *testing.B) {
	for _, size := range Sizes {
		b.Run(fmt.Sprintf("size=%d", size), func(b *testing.B) {
			query := prepareRego(b)
			input := map[string]any{
				"review":     map[string]any{"object": Pod(size)},
				"parameters": map[string]any{"repos": anyStrings(Repos(size))},
			}
			ctx := context.Background()
			eval := func() rego.ResultSet {
				results, err := query.Eval(ctx, rego.EvalInput(input))
				if err != nil {
					b.Fatal(err)
				}
				return results
			}
			measureEval(b, eval)
		})
	}
}
