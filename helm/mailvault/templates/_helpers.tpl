{{- define "mailvault.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "mailvault.fullname" -}}
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

{{/* Labels; call with (dict "root" $ "component" "aggregator"). */}}
{{- define "mailvault.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: mailvault
{{ include "mailvault.selectorLabels" . }}
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "mailvault.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mailvault.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- with .collector }}
mailvault.io/collector: {{ . }}
{{- end }}
{{- end }}

{{- define "mailvault.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "mailvault.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "mailvault.image" -}}
{{ printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The Secret the chart creates for secrets given as values. */}}
{{- define "mailvault.secretName" -}}
{{ include "mailvault.fullname" . }}-secrets
{{- end }}

{{/*
TOML from a map, the way the binaries' serde structs read it: plain keys first, then one
[table] per nested map. Helm reads every YAML number as a float, and the binaries refuse
`500.0` where they expect an integer, so whole numbers are printed as integers. A null value
leaves the key out (the binary's default applies).
Call with (dict "data" MAP "prefix" "").
*/}}
{{- define "mailvault.toml" -}}
{{- $tables := list }}
{{- range $k, $v := .data }}
{{- if kindIs "map" $v }}
{{- $tables = append $tables $k }}
{{- else if not (kindIs "invalid" $v) }}
{{ $k }} = {{ include "mailvault.tomlValue" $v }}
{{- end }}
{{- end }}
{{- range $tables }}
{{- $name := ternary . (printf "%s.%s" $.prefix .) (eq $.prefix "") }}

[{{ $name }}]
{{- include "mailvault.toml" (dict "data" (get $.data .) "prefix" $name) }}
{{- end }}
{{- end }}

{{- define "mailvault.tomlValue" -}}
{{- if kindIs "string" . }}{{ toJson . }}
{{- else if kindIs "bool" . }}{{ ternary "true" "false" . }}
{{- else if kindIs "float64" . }}{{ if eq (floor .) . }}{{ printf "%d" (int64 .) }}{{ else }}{{ printf "%v" . }}{{ end }}
{{- else if or (kindIs "int" .) (kindIs "int64" .) }}{{ printf "%d" . }}
{{- else if kindIs "slice" . }}[{{ range $i, $e := . }}{{ if $i }}, {{ end }}{{ include "mailvault.tomlValue" $e }}{{ end }}]
{{- else }}{{ fail (printf "cannot write %v (%s) as TOML" . (kindOf .)) }}
{{- end }}
{{- end }}

{{/*
A secret file as a volume: the key of an existing Secret, or of the chart's own Secret when
the value was given in values.yaml. Call with (dict "root" $ "volume" NAME "existing" NAME
"key" KEY "chartKey" KEY "path" FILE).
*/}}
{{- define "mailvault.secretVolume" -}}
- name: {{ .volume }}
  secret:
    secretName: {{ default (include "mailvault.secretName" .root) .existing }}
    defaultMode: 0440
    items:
      - key: {{ ternary .key .chartKey (ne .existing "") }}
        path: {{ .path }}
{{- end }}

{{/*
The Secret of a file the service cannot start without: existingSecret; else "" (the chart's
own Secret) when the value was given; else <fullname>-<suffix>, which the administrator
creates before the install (NOTES.txt says how), so that the chart renders without secrets in
values.yaml.
*/}}
{{- define "mailvault.expectedSecret" -}}
{{- if .existing }}{{ .existing }}
{{- else if not .value }}{{ include "mailvault.fullname" .root }}-{{ .suffix }}
{{- end }}
{{- end }}

{{- define "mailvault.natsUrl" -}}
{{ required "nats.url is required" .Values.nats.url }}
{{- end }}

{{- define "mailvault.hasNatsCa" -}}
{{- if or .Values.nats.tls.ca.existingSecret .Values.nats.tls.ca.pem }}true{{ end }}
{{- end }}

{{- define "mailvault.hasS3Secret" -}}
{{- if or .Values.s3.secretAccessKey.existingSecret .Values.s3.secretAccessKey.value }}true{{ end }}
{{- end }}

{{/* The repository URL and [s3] section shared by the aggregator and the indexer. */}}
{{- define "mailvault.repositoryUrl" -}}
{{- $bucket := required "s3.bucket is required" .Values.s3.bucket }}
{{- if .Values.s3.prefix }}
{{- printf "s3://%s/%s" $bucket (trimAll "/" .Values.s3.prefix) }}
{{- else }}
{{- printf "s3://%s" $bucket }}
{{- end }}
{{- end }}

{{- define "mailvault.s3Section" -}}
{{- $s3 := dict "region" .Values.s3.region }}
{{- with .Values.s3.endpoint }}{{ $_ := set $s3 "endpoint" . }}{{ end }}
{{- if or .Values.s3.accessKeyId (include "mailvault.hasS3Secret" .) }}
{{- $_ := set $s3 "access_key_id" (required "s3.accessKeyId is required with s3.secretAccessKey" .Values.s3.accessKeyId) }}
{{- if not (include "mailvault.hasS3Secret" .) }}{{ fail "s3.accessKeyId needs s3.secretAccessKey.existingSecret or .value" }}{{ end }}
{{- $_ := set $s3 "secret_access_key_file" "/etc/mailvault/secrets/s3/secret-access-key" }}
{{- end }}
{{- toJson (mergeOverwrite (deepCopy (default (dict) .Values.s3.config)) $s3) }}
{{- end }}

{{- define "mailvault.hasNatsCreds" -}}
{{- if or .Values.nats.credentials.existingSecret .Values.nats.credentials.creds }}true{{ end }}
{{- end }}

{{/*
The [nats] section every service shares: the URL, and the CA and credentials files where the
chart mounts them (mailvault.natsVolumes). `extra` is the service's own nats config; the
chart's keys win. Call with (dict "root" $ "extra" MAP); returns JSON.
*/}}
{{- define "mailvault.natsSection" -}}
{{- $n := mergeOverwrite (deepCopy (default (dict) .extra)) (dict "url" (include "mailvault.natsUrl" .root)) }}
{{- if include "mailvault.hasNatsCa" .root }}{{ $_ := set $n "ca_file" "/etc/mailvault/secrets/nats-ca/ca.crt" }}{{ end }}
{{- $plain := and (contains "nats://" (include "mailvault.natsUrl" .root)) (not (include "mailvault.hasNatsCa" .root)) }}
{{- if and $plain (not .root.Values.nats.allowPlaintext) }}{{ fail "nats.url is nats:// (no TLS): use tls:// (with nats.tls.ca for a private CA), or set nats.allowPlaintext: true where the network path is protected otherwise" }}{{ end }}
{{- if .root.Values.nats.allowPlaintext }}{{ $_ := set $n "allow_plaintext" true }}{{ end }}
{{- $_ := set $n "replicas" (int (default 1 .root.Values.nats.replicas)) }}
{{- if include "mailvault.hasNatsCreds" .root }}{{ $_ := set $n "creds_file" "/etc/mailvault/secrets/nats/nats.creds" }}{{ end }}
{{- if include "mailvault.hasNatsUser" (dict "root" .root "component" .component) }}{{ $_ := set $n "nkey_file" "/etc/mailvault/secrets/nats-user/seed" }}{{ end }}
{{- toJson $n }}
{{- end }}

{{/* The component's own NATS user (nats.users.<component>): its seed, for its pods only. */}}
{{- define "mailvault.hasNatsUser" -}}
{{- $u := get .root.Values.nats.users .component }}
{{- if and $u (or $u.existingSecret $u.seed) }}true{{ end }}
{{- end }}

{{- define "mailvault.natsUserVolume" -}}
{{- if include "mailvault.hasNatsUser" . }}
{{- $u := get .root.Values.nats.users .component }}
{{ include "mailvault.secretVolume" (dict "root" .root "volume" "nats-user" "existing" $u.existingSecret "key" $u.key "chartKey" (printf "nats-%s.nk" .component) "path" "seed") }}
{{- end }}
{{- end }}

{{- define "mailvault.natsUserMount" -}}
{{- if include "mailvault.hasNatsUser" . }}
- name: nats-user
  mountPath: /etc/mailvault/secrets/nats-user
  readOnly: true
{{- end }}
{{- end }}

{{- define "mailvault.natsVolumes" -}}
{{- if include "mailvault.hasNatsCa" . }}
{{ include "mailvault.secretVolume" (dict "root" . "volume" "nats-ca" "existing" .Values.nats.tls.ca.existingSecret "key" .Values.nats.tls.ca.key "chartKey" "nats-ca.crt" "path" "ca.crt") }}
{{- end }}
{{- if include "mailvault.hasNatsCreds" . }}
{{ include "mailvault.secretVolume" (dict "root" . "volume" "nats-creds" "existing" .Values.nats.credentials.existingSecret "key" .Values.nats.credentials.key "chartKey" "nats.creds" "path" "nats.creds") }}
{{- end }}
{{- end }}

{{- define "mailvault.natsMounts" -}}
{{- if include "mailvault.hasNatsCa" . }}
- name: nats-ca
  mountPath: /etc/mailvault/secrets/nats-ca
  readOnly: true
{{- end }}
{{- if include "mailvault.hasNatsCreds" . }}
- name: nats-creds
  mountPath: /etc/mailvault/secrets/nats
  readOnly: true
{{- end }}
{{- end }}

{{/* Volumes and mounts for the repository passphrase, S3 key and NATS files (aggregator, indexer). */}}
{{- define "mailvault.repositoryVolumes" -}}
{{- $p := .Values.repository.passphrase }}
{{ include "mailvault.secretVolume" (dict "root" . "volume" "passphrase" "existing" (include "mailvault.expectedSecret" (dict "root" . "existing" $p.existingSecret "value" $p.value "suffix" "passphrase")) "key" $p.key "chartKey" "passphrase" "path" "passphrase") }}
{{- if include "mailvault.hasS3Secret" . }}
{{ include "mailvault.secretVolume" (dict "root" . "volume" "s3" "existing" .Values.s3.secretAccessKey.existingSecret "key" .Values.s3.secretAccessKey.key "chartKey" "s3-secret-access-key" "path" "secret-access-key") }}
{{- end }}
{{- include "mailvault.natsVolumes" . }}
{{- include "mailvault.telemetryVolumes" . }}
{{- end }}

{{- define "mailvault.repositoryMounts" -}}
- name: passphrase
  mountPath: /etc/mailvault/secrets/passphrase
  readOnly: true
{{- if include "mailvault.hasS3Secret" . }}
- name: s3
  mountPath: /etc/mailvault/secrets/s3
  readOnly: true
{{- end }}
{{- include "mailvault.natsMounts" . }}
{{- include "mailvault.telemetryMounts" . }}
{{- end }}

{{/* [metrics] listen of every service, or nothing when metrics are off. */}}
{{- define "mailvault.metricsSection" -}}
{{- if .Values.metrics.enabled }}{{ toJson (dict "listen" (printf "0.0.0.0:%d" (int .Values.metrics.port))) }}{{ end }}
{{- end }}

{{/* Prometheus' conventional scrape annotations (pod template). */}}
{{- define "mailvault.metricsAnnotations" -}}
{{- if .Values.metrics.enabled }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .Values.metrics.port | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- end }}

{{- define "mailvault.metricsPort" -}}
- name: metrics
  containerPort: {{ .Values.metrics.port }}
  protocol: TCP
{{- end }}

{{/*
Liveness on /healthz: 200 while the process serves. It says nothing about NATS or S3, which
the services retry on their own, so it restarts only a hung process.
*/}}
{{- define "mailvault.metricsLiveness" -}}
livenessProbe:
  httpGet:
    path: /healthz
    port: metrics
  initialDelaySeconds: 10
  periodSeconds: 20
  timeoutSeconds: 5
  failureThreshold: 3
{{- end }}

{{/* Environment every container gets. */}}
{{- define "mailvault.env" -}}
- name: RUST_LOG
  value: {{ .Values.logLevel | quote }}
{{- end }}

{{- define "mailvault.podSpecCommon" -}}
serviceAccountName: {{ include "mailvault.serviceAccountName" . }}
automountServiceAccountToken: false
enableServiceLinks: false
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* The NetworkPolicy ingress rule that lets Prometheus reach the metrics port. */}}
{{- define "mailvault.metricsIngress" -}}
- ports:
    - port: {{ .Values.metrics.port }}
      protocol: TCP
  {{- with .Values.networkPolicy.metricsFrom }}
  from:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}

{{/*
The [telemetry] section of every service when telemetry.otlpEndpoint is set: endpoint, export
interval, and the CA and headers files where the chart mounts them (mailvault.telemetryVolumes); `extra` is
the service's own telemetry config, whose keys win. Call with (dict "root" $ "extra" MAP);
returns JSON, or nothing when OTLP is off.
*/}}
{{- define "mailvault.telemetrySection" -}}
{{- $t := .root.Values.telemetry }}
{{- if $t.otlpEndpoint }}
{{- $s := dict "otlp_endpoint" $t.otlpEndpoint "export_interval" $t.exportInterval }}
{{- if $t.ca.existingSecret }}{{ $_ := set $s "ca_file" "/etc/mailvault/secrets/otel-ca/ca.crt" }}{{ end }}
{{- if $t.headers.existingSecret }}{{ $_ := set $s "headers_file" "/etc/mailvault/secrets/otel-headers/headers" }}{{ end }}
{{- toJson (mergeOverwrite $s (deepCopy (default (dict) .extra))) }}
{{- end }}
{{- end }}

{{- define "mailvault.telemetryVolumes" -}}
{{- if and .Values.telemetry.otlpEndpoint .Values.telemetry.ca.existingSecret }}
{{ include "mailvault.secretVolume" (dict "root" . "volume" "otel-ca" "existing" .Values.telemetry.ca.existingSecret "key" .Values.telemetry.ca.key "chartKey" "" "path" "ca.crt") }}
{{- end }}
{{- if and .Values.telemetry.otlpEndpoint .Values.telemetry.headers.existingSecret }}
{{ include "mailvault.secretVolume" (dict "root" . "volume" "otel-headers" "existing" .Values.telemetry.headers.existingSecret "key" .Values.telemetry.headers.key "chartKey" "" "path" "headers") }}
{{- end }}
{{- end }}

{{- define "mailvault.telemetryMounts" -}}
{{- if and .Values.telemetry.otlpEndpoint .Values.telemetry.ca.existingSecret }}
- name: otel-ca
  mountPath: /etc/mailvault/secrets/otel-ca
  readOnly: true
{{- end }}
{{- if and .Values.telemetry.otlpEndpoint .Values.telemetry.headers.existingSecret }}
- name: otel-headers
  mountPath: /etc/mailvault/secrets/otel-headers
  readOnly: true
{{- end }}
{{- end }}

{{/*
The Secret holding the API's certificate: the operator's, else the chart-made self-signed one,
else none (plain text).
*/}}
{{- define "mailvault.indexerTlsSecret" -}}
{{- $t := .Values.indexer.tls }}
{{- if $t.existingSecret }}{{ $t.existingSecret }}
{{- else if $t.selfSigned }}{{ include "mailvault.fullname" . }}-indexer-tls
{{- end }}
{{- end }}
