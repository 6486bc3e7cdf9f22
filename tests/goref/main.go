// Command goref reports what the Go code on a Kubernetes node makes of image strings, so that
// registry-gate's Rust parser can be tested against the real thing rather than against a model
// of it (tests/go_differential.rs).
//
// Input on stdin: JSON Lines, one JSON string per line. Output on stdout: one JSON object per
// input, in the same order:
//
//	{"input": "...",                        the string as decoded, to catch transport mix-ups
//	 "normalized": {...},                   reference.ParseNormalizedNamed (what the kubelet checks)
//	 "docker_ref": {...},                   reference.ParseDockerRef (what containerd's CRI pulls)
//	 "cri": "..." | null,                   the string the kubelet hands to the CRI, or null
//	                                        when the kubelet refuses the image
//	 "local_id": true | false}              containerd's LocalResolve could read "cri" as the ID,
//	                                        or an ID prefix, of an image already on the node
//
// Each parse result is {"valid", "error", "domain", "path", "tag", "digest", "string"}; the
// fields a failed parse does not define are null.
package main

import (
	"bufio"
	// The kubelet links both (k8s.io/kubernetes/pkg/util/parsers), and go-digest treats an
	// algorithm as available only when its hash is linked: without crypto/sha512, sha384 and
	// sha512 digests would be "unsupported" here but accepted on a node.
	_ "crypto/sha256"
	_ "crypto/sha512"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/go-digest/digestset"
)

type parsed struct {
	Valid  bool    `json:"valid"`
	Error  *string `json:"error"`
	Domain *string `json:"domain"`
	Path   *string `json:"path"`
	Tag    *string `json:"tag"`
	Digest *string `json:"digest"`
	String *string `json:"string"`
}

type answer struct {
	Input      string  `json:"input"`
	Normalized parsed  `json:"normalized"`
	DockerRef  parsed  `json:"docker_ref"`
	CRI        *string `json:"cri"`
	LocalID    bool    `json:"local_id"`
}

func describe(named reference.Named, err error) parsed {
	if err != nil {
		message := err.Error()
		return parsed{Error: &message}
	}
	domain, path, full := reference.Domain(named), reference.Path(named), named.String()
	result := parsed{Valid: true, Domain: &domain, Path: &path, String: &full}
	if tagged, ok := named.(reference.Tagged); ok {
		tag := tagged.Tag()
		result.Tag = &tag
	}
	if digested, ok := named.(reference.Digested); ok {
		dgst := digested.Digest().String()
		result.Digest = &dgst
	}
	return result
}

// criString is the string the kubelet hands the CRI for a Pod's image (k8s.io/kubernetes
// v1.37.2, pkg/kubelet/images): the image as written, with ":latest" appended when it names
// neither a tag nor a digest. (When it has a tag and no digest, the string already ends in it.)
func criString(image string, named reference.Named) string {
	_, tagged := named.(reference.Tagged)
	_, digested := named.(reference.Digested)
	if tagged || digested {
		return image
	}
	return image + ":latest"
}

// namesCachedImage reports whether containerd's CRI LocalResolve (containerd
// internal/cri/server/images/service.go) could resolve refOrID as an image ID rather than as a
// name: directly, when go-digest parses it as a digest, or through imageStore.Get, which looks
// the string up in a digestset of the cached image IDs and accepts unique short prefixes.
//
// The name lookup that LocalResolve tries in between is left out on purpose: this asks whether
// some cache content makes the string resolve as an ID, and a cache holding no image of that
// name is such content.
func namesCachedImage(refOrID string) bool {
	if _, err := digest.Parse(refOrID); err == nil {
		return true
	}
	for _, id := range lookalikeIDs(refOrID) {
		// One ID per set: with several, a lookup could come back ambiguous, and it is enough
		// that one cached image would make the string resolve.
		set := digestset.NewSet()
		if err := set.Add(id); err != nil {
			panic(fmt.Sprintf("constructed image ID %q is invalid: %v", id, err))
		}
		if _, err := set.Lookup(refOrID); err == nil {
			return true
		}
	}
	return false
}

// lookalikeIDs builds the image IDs that digestset.Lookup(s) could match: Lookup compares the
// text after the first ':' (or, when s is no digest at all, the whole of s) as a hex prefix of
// each cached ID, so an ID that starts with that text, padded with '0' to each algorithm's
// length, is one that would match if it were cached. The real Lookup then decides.
func lookalikeIDs(s string) []digest.Digest {
	candidates := []string{s}
	if _, encoded, found := strings.Cut(s, ":"); found {
		candidates = append(candidates, encoded)
	}
	var ids []digest.Digest
	for _, hex := range candidates {
		if hex == "" || strings.Trim(hex, "0123456789abcdef") != "" {
			continue // cached IDs are lower-case hex; nothing else can be a prefix of one
		}
		for _, algorithm := range []digest.Algorithm{digest.SHA256, digest.SHA384, digest.SHA512} {
			size := algorithm.Size() * 2
			if len(hex) <= size {
				ids = append(ids, digest.NewDigestFromEncoded(algorithm, hex+strings.Repeat("0", size-len(hex))))
			}
		}
	}
	return ids
}

func answerFor(image string) answer {
	normalized, err := reference.ParseNormalizedNamed(image)
	result := answer{Input: image, Normalized: describe(normalized, err)}
	result.DockerRef = describe(reference.ParseDockerRef(image))
	// The kubelet refuses what ParseNormalizedNamed refuses (InvalidImageName); the CRI never
	// sees it.
	if err == nil {
		cri := criString(image, normalized)
		result.CRI = &cri
		result.LocalID = namesCachedImage(cri)
	}
	return result
}

func run(stdin io.Reader, stdout io.Writer) error {
	decoder := json.NewDecoder(bufio.NewReaderSize(stdin, 1<<20))
	writer := bufio.NewWriterSize(stdout, 1<<20)
	encoder := json.NewEncoder(writer)
	// Inputs contain '<' and '&'; escaping them would only make failures harder to read.
	encoder.SetEscapeHTML(false)
	for n := 1; ; n++ {
		var image string
		if err := decoder.Decode(&image); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return fmt.Errorf("input value %d is not a JSON string: %w", n, err)
		}
		if err := encoder.Encode(answerFor(image)); err != nil {
			return fmt.Errorf("writing the answer for input value %d: %w", n, err)
		}
	}
	return writer.Flush()
}

func main() {
	if err := run(os.Stdin, os.Stdout); err != nil {
		fmt.Fprintf(os.Stderr, "goref: %v\n", err)
		os.Exit(1)
	}
}
