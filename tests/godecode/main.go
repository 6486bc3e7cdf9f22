// Command godecode reports what the Kubernetes API server's own JSON decoding makes of an
// AdmissionReview body, so that registry-gate's one-pass reader can be tested against it
// (tests/review_differential.rs).
//
// Input on stdin: one body per line, base64 (standard, padded). Output on stdout: one JSON
// object per input, in the same order:
//
//	{"ok": true|false,            the review and its objects decode into their API types
//	 "error": "..." | null,       why not
//	 "duplicates": ["..."],       duplicate fields the strict decoder saw (Go keeps the last)
//	 "api_version", "kind", "uid", "review_kind", "sub_resource", "operation",
//	 "namespace", "name": "...",
//	 "object": [[location, image], ...] | null,      images of request.object, as located
//	 "old_object": [[location, image], ...] | null}  by registry-gate: spec.containers[0].image
//
// Decoding is sigs.k8s.io/json's case-sensitive Unmarshal, which apimachinery's JSON serializer
// uses for every API object, into the k8s.io/api types of the reviewed kinds.
package main

import (
	"bufio"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"

	admissionv1 "k8s.io/api/admission/v1"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	kjson "sigs.k8s.io/json"
)

type answer struct {
	OK          bool        `json:"ok"`
	Error       *string     `json:"error"`
	Duplicates  []string    `json:"duplicates"`
	APIVersion  string      `json:"api_version"`
	Kind        string      `json:"kind"`
	UID         string      `json:"uid"`
	ReviewKind  string      `json:"review_kind"`
	SubResource string      `json:"sub_resource"`
	Operation   string      `json:"operation"`
	Namespace   string      `json:"namespace"`
	Name        string      `json:"name"`
	Object      [][2]string `json:"object"`
	OldObject   [][2]string `json:"old_object"`
}

// decode reads data into v as the API server would, noting duplicate fields.
func decode(data []byte, v any, duplicates *[]string) error {
	strict, err := kjson.UnmarshalStrict(data, v, kjson.DisallowDuplicateFields)
	if err != nil {
		return err
	}
	for _, e := range strict {
		*duplicates = append(*duplicates, e.Error())
	}
	return nil
}

func images(specPath string, spec *corev1.PodSpec) [][2]string {
	found := [][2]string{}
	for i, c := range spec.Containers {
		found = append(found, [2]string{fmt.Sprintf("%s.containers[%d].image", specPath, i), c.Image})
	}
	for i, c := range spec.InitContainers {
		found = append(found, [2]string{fmt.Sprintf("%s.initContainers[%d].image", specPath, i), c.Image})
	}
	for i, c := range spec.EphemeralContainers {
		found = append(found, [2]string{fmt.Sprintf("%s.ephemeralContainers[%d].image", specPath, i), c.Image})
	}
	for i, v := range spec.Volumes {
		if v.Image != nil {
			found = append(found, [2]string{fmt.Sprintf("%s.volumes[%d].image.reference", specPath, i), v.Image.Reference})
		}
	}
	return found
}

// objectImages decodes one object of the review's kind and lists its images; nil for an
// absent object, an empty list for a kind without Pod specs.
func objectImages(kind string, raw []byte, duplicates *[]string) ([][2]string, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	template := func(obj any, spec func() *corev1.PodSpec, path string) ([][2]string, error) {
		if err := decode(raw, obj, duplicates); err != nil {
			return nil, err
		}
		return images(path, spec()), nil
	}
	switch kind {
	case "Pod":
		var o corev1.Pod
		return template(&o, func() *corev1.PodSpec { return &o.Spec }, "spec")
	case "Deployment":
		var o appsv1.Deployment
		return template(&o, func() *corev1.PodSpec { return &o.Spec.Template.Spec }, "spec.template.spec")
	case "ReplicaSet":
		var o appsv1.ReplicaSet
		return template(&o, func() *corev1.PodSpec { return &o.Spec.Template.Spec }, "spec.template.spec")
	case "StatefulSet":
		var o appsv1.StatefulSet
		return template(&o, func() *corev1.PodSpec { return &o.Spec.Template.Spec }, "spec.template.spec")
	case "DaemonSet":
		var o appsv1.DaemonSet
		return template(&o, func() *corev1.PodSpec { return &o.Spec.Template.Spec }, "spec.template.spec")
	case "Job":
		var o batchv1.Job
		return template(&o, func() *corev1.PodSpec { return &o.Spec.Template.Spec }, "spec.template.spec")
	case "ReplicationController":
		var o corev1.ReplicationController
		return template(&o, func() *corev1.PodSpec {
			if o.Spec.Template == nil {
				return &corev1.PodSpec{}
			}
			return &o.Spec.Template.Spec
		}, "spec.template.spec")
	case "CronJob":
		var o batchv1.CronJob
		return template(&o, func() *corev1.PodSpec { return &o.Spec.JobTemplate.Spec.Template.Spec }, "spec.jobTemplate.spec.template.spec")
	case "ConfigMap":
		var o corev1.ConfigMap
		return [][2]string{}, decode(raw, &o, duplicates)
	case "Service":
		var o corev1.Service
		return [][2]string{}, decode(raw, &o, duplicates)
	}
	var o map[string]any
	return [][2]string{}, decode(raw, &o, duplicates)
}

func read(body []byte) answer {
	a := answer{Duplicates: []string{}}
	fail := func(err error) answer {
		message := err.Error()
		a.OK, a.Error = false, &message
		return a
	}
	var review admissionv1.AdmissionReview
	if err := decode(body, &review, &a.Duplicates); err != nil {
		return fail(err)
	}
	a.APIVersion, a.Kind = review.APIVersion, review.Kind
	if r := review.Request; r != nil {
		a.UID, a.ReviewKind, a.SubResource = string(r.UID), r.Kind.Kind, r.SubResource
		a.Operation, a.Namespace, a.Name = string(r.Operation), r.Namespace, r.Name
		var err error
		if a.Object, err = objectImages(r.Kind.Kind, r.Object.Raw, &a.Duplicates); err != nil {
			return fail(err)
		}
		if a.OldObject, err = objectImages(r.Kind.Kind, r.OldObject.Raw, &a.Duplicates); err != nil {
			return fail(err)
		}
	}
	a.OK = true
	return a
}

func main() {
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 0, 1<<20), 64<<20)
	out := bufio.NewWriter(os.Stdout)
	encoder := json.NewEncoder(out)
	for in.Scan() {
		body, err := base64.StdEncoding.DecodeString(in.Text())
		var a answer
		if err != nil {
			a = answer{Duplicates: []string{}}
			message := "the line is not base64: " + err.Error()
			a.Error = &message
		} else {
			a = read(body)
		}
		if err := encoder.Encode(a); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}
	if err := in.Err(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if err := out.Flush(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
