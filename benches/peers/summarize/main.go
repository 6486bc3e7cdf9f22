// Command summarize reads `go test -bench` output (the peers, and registry-gate's side printed
// in the same format by benches/peers.rs) and prints the comparison as Markdown tables: the
// median of the runs of each benchmark, per review and per image.
package main

import (
	"bufio"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"registry-gate.io/benches/peers"
)

// line is one result: "BenchmarkRego/size=10-2  475  475651 ns/op ...".
var line = regexp.MustCompile(`^Benchmark(\w+)/size=(\d+)(?:-\d+)?\s+\d+\s+([0-9.]+) ns/op`)

func main() {
	runs := map[string]map[int][]float64{}
	for _, path := range os.Args[1:] {
		file, err := os.Open(path)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		scanner := bufio.NewScanner(file)
		for scanner.Scan() {
			m := line.FindStringSubmatch(strings.TrimSpace(scanner.Text()))
			if m == nil {
				continue
			}
			size, _ := strconv.Atoi(m[2])
			ns, _ := strconv.ParseFloat(m[3], 64)
			if runs[m[1]] == nil {
				runs[m[1]] = map[int][]float64{}
			}
			runs[m[1]][size] = append(runs[m[1]][size], ns)
		}
		file.Close()
	}
	median := func(name string, size int) float64 {
		values := slices.Clone(runs[name][size])
		if len(values) == 0 {
			fmt.Fprintf(os.Stderr, "no result for %s at %d registries\n", name, size)
			os.Exit(1)
		}
		slices.Sort(values)
		if n := len(values); n%2 == 0 {
			return (values[n/2-1] + values[n/2]) / 2
		}
		return values[len(values)/2]
	}
	images := float64(len(peers.PodImages(10)))

	fmt.Printf("Per image (median per-review time / %d images; Rego: review converted per Eval, parameters once; CEL: without cost tracking):\n\n", int(images))
	fmt.Println("| size | Rego ns/image | CEL ns/image | registry-gate ns/image | Rego/registry-gate | CEL/registry-gate |")
	fmt.Println("|---:|---:|---:|---:|---:|---:|")
	regoGoal, celGoal := true, true
	for _, size := range peers.Sizes {
		rego, cel, gate := median("Rego", size), median("CELUntracked", size), median("RegistryGate", size)
		fmt.Printf("| %s | %s | %s | %s | %s× | %s× |\n", group(float64(size)), group(rego/images), group(cel/images),
			group(gate/images), ratio(rego/gate), ratio(cel/gate))
		regoGoal = regoGoal && rego/gate >= 100
		celGoal = celGoal && cel/gate > 1
	}
	fmt.Printf("\nGoals: ≥100× faster than Rego at every size: %s; faster than CEL at every size: %s.\n", verdict(regoGoal), verdict(celGoal))

	fmt.Printf("\nPer review (the whole %d-image Pod), median of %d runs each:\n\n", int(images), len(runs["RegistryGate"][peers.Sizes[0]]))
	fmt.Println("| size | Rego | Rego, whole input converted per Eval | CEL, cost tracking (as kube-apiserver) | CEL, no cost tracking | registry-gate |")
	fmt.Println("|---:|---:|---:|---:|---:|---:|")
	for _, size := range peers.Sizes {
		fmt.Printf("| %s | %s | %s | %s | %s | %s |\n", group(float64(size)), duration(median("Rego", size)),
			duration(median("RegoInput", size)), duration(median("CEL", size)), duration(median("CELUntracked", size)),
			duration(median("RegistryGate", size)))
	}
}

func verdict(met bool) string {
	if met {
		return "met"
	}
	return "missed"
}

// group writes a number rounded to an integer with thousands separators.
func group(x float64) string {
	s := strconv.FormatInt(int64(x+0.5), 10)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}

// ratio keeps three significant digits below 100 and groups thousands above.
func ratio(x float64) string {
	switch {
	case x < 10:
		return strconv.FormatFloat(x, 'f', 2, 64)
	case x < 100:
		return strconv.FormatFloat(x, 'f', 1, 64)
	default:
		return group(x)
	}
}

func duration(ns float64) string {
	switch {
	case ns < 1e3:
		return fmt.Sprintf("%.0f ns", ns)
	case ns < 1e6:
		return fmt.Sprintf("%.1f µs", ns/1e3)
	case ns < 1e9:
		return fmt.Sprintf("%.1f ms", ns/1e6)
	default:
		return fmt.Sprintf("%.2f s", ns/1e9)
	}
}
