{{/*
The operator's objects keep the fixed names and labels `laneway k8s install --print` gives
them: the router sidecars find the routes feed at laneway-operator.<namespace>.svc:8790, and
one operator serves the whole cluster (kopf --standalone --all-namespaces), so a second
release fails on the cluster-scoped ClusterRole instead of running two operators.
*/}}

{{/* The selector: the same on the Deployment, its pods and the Service. */}}
{{- define "laneway.selectorLabels" -}}
app.kubernetes.io/name: laneway-operator
app.kubernetes.io/part-of: laneway
{{- end }}

{{/* On every object's metadata (never in a selector: selectors cannot change). */}}
{{- define "laneway.labels" -}}
{{ include "laneway.selectorLabels" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{- define "laneway.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}
