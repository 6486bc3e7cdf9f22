{{/*
Object names are fixed, not derived from the release name: the binary looks up
registry-gate-audit and registry-gate-sync-status by name, the alert rules select on the jobs
registry-gate and registry-gate-controller (named after the Services), and the webhook
configurations and ClusterRoles are cluster-wide, so one release per cluster.
*/}}

{{/* The labels Helm's own tooling reads; manifests/ has none of them. */}}
{{- define "registry-gate.helmLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}

{{/*
Labels of an object, the same as manifests/ gives it, plus Helm's. (dict "ctx" $ "component" C):
with a component, app.kubernetes.io/name and /component as well; without, part-of alone (as
the base's objects that name no component).
*/}}
{{- define "registry-gate.labels" -}}
{{- with .component }}
app.kubernetes.io/name: registry-gate
app.kubernetes.io/component: {{ . }}
{{- end }}
app.kubernetes.io/part-of: registry-gate
{{ include "registry-gate.helmLabels" .ctx }}
{{- end }}

{{/* The image of both Deployments: by digest when one is given, else by tag. */}}
{{- define "registry-gate.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}
{{- end }}

{{/* The policy ConfigMap's name: the chart's own, or the one given. */}}
{{- define "registry-gate.policyConfigMap" -}}
{{ .Values.existingPolicyConfigMap | default "registry-gate-policy" }}
{{- end }}

{{/* The Secret the server mounts. */}}
{{- define "registry-gate.tlsSecret" -}}
{{- if eq .Values.certificates.mode "existingSecret" -}}
{{ required "certificates.existingSecret.name is required with certificates.mode=existingSecret" .Values.certificates.existingSecret.name }}
{{- else -}}
registry-gate-tls
{{- end }}
{{- end }}

{{/*
caBundle of every webhook, base64 of the PEM CA; empty with cert-manager, whose CA injector
fills it in.
*/}}
{{- define "registry-gate.caBundle" -}}
{{- $c := .Values.certificates -}}
{{- if eq $c.mode "selfManaged" -}}
{{ required "certificates.selfManaged.caCrt (PEM) is required with certificates.mode=selfManaged" $c.selfManaged.caCrt | b64enc }}
{{- else if eq $c.mode "existingSecret" -}}
{{- $ca := required "certificates.existingSecret.caBundle (the CA as PEM or base64) is required with certificates.mode=existingSecret" $c.existingSecret.caBundle -}}
{{- if contains "-----BEGIN" $ca }}{{ $ca | b64enc }}{{ else }}{{ $ca | nospace }}{{ end }}
{{- end }}
{{- end }}

{{/*
clientConfig of a webhook: the Service registry-gate, port 443, at the path given.
*/}}
{{- define "registry-gate.clientConfig" -}}
clientConfig:
  {{- with include "registry-gate.caBundle" .ctx }}
  caBundle: {{ . }}
  {{- end }}
  service:
    name: registry-gate
    namespace: {{ .ctx.Release.Namespace }}
    port: 443
    path: {{ .path }}
{{- end }}

{{/*
namespaceSelector of the image and pull-secret webhooks: never kube-system nor the release
namespace (where the server's own Pods are created), by the name label the API server sets.
*/}}
{{- define "registry-gate.guardedNamespaces" -}}
namespaceSelector:
  matchExpressions:
    - key: kubernetes.io/metadata.name
      operator: NotIn
      values: {{ concat (list "kube-system" .Release.Namespace) .Values.webhooks.excludedNamespaces | uniq | toJson }}
    {{- if .Values.webhooks.namespaceOptOut }}
    - key: registry-gate.io/ignore
      operator: NotIn
      values: ["true"]
    {{- end }}
{{- end }}

{{/*
A text as the value of a ConfigMap data key (at indent 2), kept byte for byte: toYaml picks
the block or quoted style that can hold it.
*/}}
{{- define "registry-gate.configMapText" -}}
{{ toYaml . | indent 4 | trim }}
{{- end }}
