{{/*
The chart's name, or nameOverride.
*/}}
{{- define "bulk-progress-exporter.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 52 | trimSuffix "-" }}
{{- end }}

{{/*
The full name of the release's objects. At most 52 characters: the StatefulSet's controller adds
"-" and a 10-character revision hash to its name in a label value, limited to 63 characters.
*/}}
{{- define "bulk-progress-exporter.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Chart name and version, for the helm.sh/chart label.
*/}}
{{- define "bulk-progress-exporter.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The chart's own labels.
*/}}
{{- define "bulk-progress-exporter.chartLabels" -}}
helm.sh/chart: {{ include "bulk-progress-exporter.chart" . }}
{{ include "bulk-progress-exporter.selectorLabels" . }}
app.kubernetes.io/version: {{ include "bulk-progress-exporter.imageTag" . | trunc 63 | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Labels every object carries: the chart's own, then commonLabels.
*/}}
{{- define "bulk-progress-exporter.labels" -}}
{{ include "bulk-progress-exporter.chartLabels" . }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
The pods' labels: the chart's own, then commonLabels and podLabels (podLabels win a key both
set, being the more specific).
*/}}
{{- define "bulk-progress-exporter.podLabels" -}}
{{ include "bulk-progress-exporter.chartLabels" . }}
{{- with merge (deepCopy (.Values.podLabels | default dict)) (.Values.commonLabels | default dict) }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Label keys the chart sets itself, which commonLabels must not repeat.
*/}}
{{- define "bulk-progress-exporter.ownLabelKeys" -}}
helm.sh/chart app.kubernetes.io/name app.kubernetes.io/instance app.kubernetes.io/version app.kubernetes.io/managed-by app.kubernetes.io/component
{{- end }}

{{/*
Selector labels: stable over upgrades, so no chart or version label.
*/}}
{{- define "bulk-progress-exporter.selectorLabels" -}}
app.kubernetes.io/name: {{ include "bulk-progress-exporter.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "bulk-progress-exporter.imageTag" -}}
{{- .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/*
The container image: repository:tag, or with image.digest set repository@digest (pinned to the
digest alone) or, when a tag is given too, repository:tag@digest (the tag for people, the digest
for the runtime).
*/}}
{{- define "bulk-progress-exporter.image" -}}
{{- $image := .Values.image }}
{{- if $image.digest }}
{{- if $image.tag }}
{{- printf "%s:%s@%s" $image.repository $image.tag $image.digest }}
{{- else }}
{{- printf "%s@%s" $image.repository $image.digest }}
{{- end }}
{{- else }}
{{- printf "%s:%s" $image.repository (include "bulk-progress-exporter.imageTag" .) }}
{{- end }}
{{- end }}

{{- define "bulk-progress-exporter.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "bulk-progress-exporter.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The Secret mounted under secretsMountPath: existingSecret, or the one the chart makes from
`secrets`, or none.
*/}}
{{- define "bulk-progress-exporter.secretName" -}}
{{- if .Values.existingSecret }}
{{- .Values.existingSecret }}
{{- else if .Values.secrets }}
{{- include "bulk-progress-exporter.fullname" . }}
{{- end }}
{{- end }}

{{- define "bulk-progress-exporter.configPath" -}}
/etc/bulk-progress-exporter/config.yaml
{{- end }}

{{- define "bulk-progress-exporter.webConfigDir" -}}
/etc/bulk-progress-exporter/web
{{- end }}

{{/*
The exporter's config.yaml as data: the `config` value, plus, when sourceFiles.secretName is
set, a source_files pattern for the directory that Secret is mounted at.
*/}}
{{- define "bulk-progress-exporter.config" -}}
{{- $config := deepCopy (.Values.config | default dict) }}
{{- with .Values.sourceFiles.secretName }}
{{- $pattern := printf "%s/%s" (trimSuffix "/" $.Values.sourceFiles.mountPath) $.Values.sourceFiles.pattern }}
{{- $patterns := get $config "source_files" | default list }}
{{- $_ := set $config "source_files" (append $patterns $pattern) }}
{{- end }}
{{- toYaml $config }}
{{- end }}

{{/*
Refuse values that would put a secret where it does not belong. An api_key in the config may
only name an environment variable (`${VAR}`, no default), whose value comes from a Secret.
*/}}
{{- define "bulk-progress-exporter.validate" -}}
{{- $own := splitList " " (include "bulk-progress-exporter.ownLabelKeys" .) }}
{{- range $key, $_ := .Values.commonLabels }}
{{- if has $key $own }}
{{- fail (printf "commonLabels.%s: the chart sets this label itself" $key) }}
{{- end }}
{{- end }}
{{- $pdb := .Values.podDisruptionBudget }}
{{- if and $pdb.enabled (not (kindIs "invalid" $pdb.minAvailable)) (not (kindIs "invalid" $pdb.maxUnavailable)) }}
{{- fail "podDisruptionBudget: set minAvailable or maxUnavailable, not both (set the other to null)" }}
{{- end }}
{{- if and .Values.existingSecret .Values.secrets }}
{{- fail "existingSecret and secrets are both set: choose one (existingSecret names a Secret you manage; secrets makes one from values)" }}
{{- end }}
{{- $config := .Values.config | default dict }}
{{- if not (kindIs "map" $config) }}
{{- fail "config must be a mapping: the exporter's config.yaml" }}
{{- end }}
{{- $sources := get $config "sources" | default list }}
{{- if not (kindIs "slice" $sources) }}
{{- fail "config.sources must be a list" }}
{{- end }}
{{- range $i, $source := $sources }}
{{- if and (kindIs "map" $source) (hasKey $source "api_key") }}
{{- $key := get $source "api_key" }}
{{- if not (regexMatch "^\\$\\{[A-Za-z_][A-Za-z0-9_]*\\}$" (toString $key)) }}
{{- fail (printf "config.sources[%d].api_key (source %q): an inline API key would be stored in a ConfigMap, which is no place for a secret. Put the key in a Secret (set existingSecret, or secrets) and use api_key_file: %s/<key> instead, or api_key: ${VAR} with VAR set in env from a secretKeyRef. See docs/kubernetes.md." $i (toString (get $source "name")) $.Values.secretsMountPath) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
