package peers

import (
	"fmt"
	"testing"

	"github.com/google/cel-go/cel"
	"github.com/google/cel-go/common/types"
)

// allowedReposCEL is the typical ValidatingAdmissionPolicy expression for an allowed-registries
// rule, WRITTEN HERE: `<list>.all(c, params.repos.exists(r, c.image.startsWith(r)))`, the
// pattern of the Kubernetes documentation's ValidatingAdmissionPolicy examples (a `params` list
// checked with `all`/`exists`), and what gatekeeper-library's CEL variant of k8sallowedrepos
// evaluates. Like the Rego rule it also covers init and ephemeral containers.
const allowedReposCEL = `object.spec.containers.all(c, params.repos.exists(r, c.image.startsWith(r))) &&
  (!has(object.spec.initContainers) ||
    object.spec.initContainers.all(c, params.repos.exists(r, c.image.startsWith(r)))) &&
  (!has(object.spec.ephemeralContainers) ||
    object.spec.ephemeralContainers.all(c, params.repos.exists(r, c.image.startsWith(r))))`

// perCallLimit is kube-apiserver's cost limit for one CEL expression (celconfig.PerCallLimit);
// the API server evaluates with cost tracking on, so this run does too.
const perCallLimit = 1_000_000

// BenchmarkCEL is one review of the Pod as kube-apiserver evaluates a policy: with cost
// tracking and its per-expression limit. The expression is compiled and planned once, as when
// the policy is loaded; each Eval gets a fresh activation over the decoded Pod and the
// parameters, as each request does.
func BenchmarkCEL(b *testing.B) {
	benchmarkCEL(b, cel.EvalOptions(cel.OptOptimize), cel.CostLimit(perCallLimit), cel.InterruptCheckFrequency(100))
}

// BenchmarkCELUntracked is the same without cost tracking: the engine alone, a lower bound.
// cel-go's cost tracker keeps a stack it searches linearly, which grows with the iterations of
// a comprehension, so tracking costs more the longer the repo list.
func BenchmarkCELUntracked(b *testing.B) {
	benchmarkCEL(b, cel.EvalOptions(cel.OptOptimize))
}

func benchmarkCEL(b *testing.B, options ...cel.ProgramOption) {
	env, err := cel.NewEnv(
		cel.Variable("object", cel.DynType),
		cel.Variable("params", cel.DynType),
	)
	if err != nil {
		b.Fatal(err)
	}
	checked, issues := env.Compile(allowedReposCEL)
	if issues != nil && issues.Err() != nil {
		b.Fatal(issues.Err())
	}
	program, err := env.Program(checked, options...)
	if err != nil {
		b.Fatal(err)
	}
	for _, size := range Sizes {
		b.Run(fmt.Sprintf("size=%d", size), func(b *testing.B) {
			pod := Pod(size)
			params := map[string]any{"repos": anyStrings(Repos(size))}
			eval := func() (bool, uint64) {
				out, details, err := program.Eval(map[string]any{"object": pod, "params": params})
				if err != nil {
					b.Fatal(err)
				}
				var cost uint64
				if details != nil && details.ActualCost() != nil {
					cost = *details.ActualCost()
				}
				return out == types.True, cost
			}
			allowed, cost := eval()
			if allowed {
				b.Fatal("the Pod with a refused image was allowed")
			}
			b.ResetTimer()
			for b.Loop() {
				eval()
			}
			if cost > 0 {
				// The API server's measure of the work, against its limit of 1,000,000 per call.
				b.ReportMetric(float64(cost), "cel-cost")
			}
		})
	}
}
