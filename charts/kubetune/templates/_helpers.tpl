{{/*
Names, labels and images shared by every template of the chart.
*/}}

{{/* The chart's name (or nameOverride), cut to a DNS label. */}}
{{- define "kubetune.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* "<release>-<chart>", or the release name alone when it already holds the chart's name. */}}
{{- define "kubetune.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "kubetune.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selects the operator's pods; never changes between upgrades. */}}
{{- define "kubetune.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kubetune.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "kubetune.labels" -}}
helm.sh/chart: {{ include "kubetune.chart" . }}
{{ include "kubetune.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kubetune
{{- end }}

{{- define "kubetune.serviceAccountName" -}}
{{- default (include "kubetune.fullname" .) .Values.serviceAccount.name }}
{{- end }}

{{/* The leader-election Lease's name (in the release's namespace). */}}
{{- define "kubetune.leaseName" -}}
{{- default (include "kubetune.fullname" .) .Values.leaderElection.leaseName }}
{{- end }}

{{- define "kubetune.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "kubetune.trainerImage" -}}
{{- printf "%s:%s" .Values.trainer.image.repository (default .Chart.AppVersion .Values.trainer.image.tag) }}
{{- end }}

{{/*
Metadata of a CRD installed by the chart: its own labels, and Helm's "keep"
resource policy when crds.keep is on.
*/}}
{{- define "kubetune.crdMetadata" -}}
labels:
  {{- include "kubetune.labels" . | nindent 2 }}
{{- if .Values.crds.keep }}
annotations:
  helm.sh/resource-policy: keep
{{- end }}
{{- end }}

{{/*
A CRD from files/crds/ (an exact copy of the repository's crds/; a test fails
when they differ), verbatim but for the chart's labels and annotations added
under its top-level metadata. The text is not parsed and re-serialized, which
would turn a default such as 2.0e-5 into a string. Call with
(list $ "files/crds/<file>.yaml").
*/}}
{{- define "kubetune.crdFromFile" -}}
{{- $root := index . 0 }}
{{- $text := $root.Files.Get (index . 1) }}
{{- $metadata := printf "\nmetadata:\n%s\n" (include "kubetune.crdMetadata" $root | indent 2) }}
{{- replace "\nmetadata:\n" $metadata $text }}
{{- end }}
