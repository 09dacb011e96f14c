{{/* Names and labels. */}}
{{- define "txflow.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "txflow.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains (include "txflow.name" .) .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "txflow.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "txflow.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "txflow.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Selector labels of one stage's pods: (dict "root" $ "stage" "ledger"). */}}
{{- define "txflow.selectorLabels" -}}
app.kubernetes.io/name: {{ include "txflow.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .stage }}
{{- end }}

{{- define "txflow.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "txflow.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "txflow.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* The stages that consume a topic in a consumer group, and scale by its lag. */}}
{{- define "txflow.consumingStages" -}}
router ledger notifier archiver
{{- end }}

{{/* Every stage, each a Deployment of its own when enabled. */}}
{{- define "txflow.stages" -}}
gateway {{ include "txflow.consumingStages" . }}
{{- end }}

{{/* Admin (/metrics, /healthz, /readyz) and gateway ports: fixed, set by environment. */}}
{{- define "txflow.adminPort" -}}9480{{- end }}
{{- define "txflow.gatewayPort" -}}8080{{- end }}

{{/*
The environment every txflow container gets: where its configuration is, and the settings
the chart owns (ports, partitions, rules, secret paths, tracing) as TXFLOW_* overrides.
*/}}
{{- define "txflow.env" -}}
{{- $s := .Values.secrets -}}
- name: TXFLOW_CONFIG
  value: /etc/txflow/config/txflow.toml
- name: TXFLOW_LOG_FORMAT
  value: {{ .Values.logFormat | quote }}
- name: TXFLOW_LOG
  value: {{ .Values.logLevel | quote }}
- name: TXFLOW_ADMIN__LISTEN
  value: "0.0.0.0:{{ include "txflow.adminPort" . }}"
- name: TXFLOW_GATEWAY__LISTEN
  value: "0.0.0.0:{{ include "txflow.gatewayPort" . }}"
- name: TXFLOW_TOPICS__PARTITIONS
  value: {{ .Values.partitions | quote }}
{{- if .Values.rules }}
- name: TXFLOW_ROUTER__RULES_FILE
  value: /etc/txflow/rules/rules.yaml
{{- end }}
{{- if $s.apiKeys.name }}
- name: TXFLOW_GATEWAY__API_KEYS_FILE
  value: /etc/txflow/secrets/api-keys/{{ $s.apiKeys.key }}
{{- end }}
{{- if $s.gatewayTls.name }}
- name: TXFLOW_GATEWAY__TLS_CERT_FILE
  value: /etc/txflow/secrets/gateway-tls/tls.crt
- name: TXFLOW_GATEWAY__TLS_KEY_FILE
  value: /etc/txflow/secrets/gateway-tls/tls.key
{{- end }}
{{- if $s.kafkaSasl.name }}
- name: TXFLOW_KAFKA__PROPERTY_FILES__SASL.PASSWORD
  value: /etc/txflow/secrets/kafka-sasl/{{ $s.kafkaSasl.passwordKey }}
{{- end }}
{{- if $s.kafkaTls.name }}
- name: TXFLOW_KAFKA__PROPERTIES__SSL.CA.LOCATION
  value: /etc/txflow/secrets/kafka-tls/{{ $s.kafkaTls.caKey }}
{{- if $s.kafkaTls.certKey }}
- name: TXFLOW_KAFKA__PROPERTIES__SSL.CERTIFICATE.LOCATION
  value: /etc/txflow/secrets/kafka-tls/{{ $s.kafkaTls.certKey }}
- name: TXFLOW_KAFKA__PROPERTIES__SSL.KEY.LOCATION
  value: /etc/txflow/secrets/kafka-tls/{{ $s.kafkaTls.keyKey }}
{{- end }}
{{- end }}
{{- if $s.storePassword.name }}
- name: TXFLOW_STORE__PASSWORD_FILE
  value: /etc/txflow/secrets/store-password/{{ $s.storePassword.key }}
{{- end }}
{{- if $s.storeTls.name }}
- name: TXFLOW_STORE__TLS_CA_FILE
  value: /etc/txflow/secrets/store-tls/{{ $s.storeTls.caKey }}
{{- if $s.storeTls.certKey }}
- name: TXFLOW_STORE__TLS_CERT_FILE
  value: /etc/txflow/secrets/store-tls/{{ $s.storeTls.certKey }}
- name: TXFLOW_STORE__TLS_KEY_FILE
  value: /etc/txflow/secrets/store-tls/{{ $s.storeTls.keyKey }}
{{- end }}
{{- end }}
{{- if $s.registryPassword.name }}
- name: TXFLOW_SCHEMAS__REGISTRY_PASSWORD_FILE
  value: /etc/txflow/secrets/registry-password/{{ $s.registryPassword.key }}
{{- end }}
{{- with .Values.archiver.storage }}
{{- if .url }}
- name: TXFLOW_ARCHIVER__STORAGE__URL
  value: {{ .url | quote }}
- name: TXFLOW_ARCHIVER__STORAGE__REGION
  value: {{ .region | quote }}
{{- if .endpoint }}
- name: TXFLOW_ARCHIVER__STORAGE__ENDPOINT
  value: {{ .endpoint | quote }}
{{- end }}
{{- end }}
{{- end }}
{{- with $s.archiveCredentials }}
{{- if .name }}
- name: TXFLOW_ARCHIVER__STORAGE__ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ .name }}
      key: {{ .accessKeyIdKey }}
- name: TXFLOW_ARCHIVER__STORAGE__SECRET_ACCESS_KEY_FILE
  value: /etc/txflow/secrets/archive-credentials/{{ .secretAccessKeyKey }}
{{- end }}
{{- end }}
{{- if .Values.tracing.otlpEndpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ .Values.tracing.otlpEndpoint | quote }}
{{- end }}
{{- end }}

{{/* Volumes: (dict "root" $ "config" "<ConfigMap name>"). */}}
{{- define "txflow.volumes" -}}
{{- $s := .root.Values.secrets -}}
- name: config
  configMap:
    name: {{ .config }}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- if .root.Values.rules }}
- name: rules
  configMap:
    name: {{ include "txflow.fullname" .root }}-rules
{{- end }}
{{- range $volume, $secret := dict "api-keys" $s.apiKeys "gateway-tls" $s.gatewayTls "kafka-sasl" $s.kafkaSasl "kafka-tls" $s.kafkaTls "store-password" $s.storePassword "store-tls" $s.storeTls "registry-password" $s.registryPassword "archive-credentials" $s.archiveCredentials "webhooks" $s.webhooks }}
{{- if $secret.name }}
- name: {{ $volume }}
  secret:
    secretName: {{ $secret.name }}
    defaultMode: 0440
{{- end }}
{{- end }}
{{- end }}

{{- define "txflow.volumeMounts" -}}
{{- $s := .Values.secrets -}}
- name: config
  mountPath: /etc/txflow/config
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- if .Values.rules }}
- name: rules
  mountPath: /etc/txflow/rules
  readOnly: true
{{- end }}
{{- range $volume, $secret := dict "api-keys" $s.apiKeys "gateway-tls" $s.gatewayTls "kafka-sasl" $s.kafkaSasl "kafka-tls" $s.kafkaTls "store-password" $s.storePassword "store-tls" $s.storeTls "registry-password" $s.registryPassword "archive-credentials" $s.archiveCredentials }}
{{- if $secret.name }}
- name: {{ $volume }}
  mountPath: /etc/txflow/secrets/{{ $volume }}
  readOnly: true
{{- end }}
{{- end }}
{{- if $s.webhooks.name }}
- name: webhooks
  mountPath: /etc/txflow/webhooks
  readOnly: true
{{- end }}
{{- end }}

{{/* Refusals that the schema cannot express. */}}
{{- define "txflow.validate" -}}
{{- if and .Values.archiver.enabled (not .Values.archiver.storage.url) }}
{{- fail "archiver.enabled needs archiver.storage.url: s3://BUCKET/PREFIX" }}
{{- end }}
{{- range $stage := splitList " " (include "txflow.consumingStages" .) }}
{{- $values := index $.Values $stage }}
{{- if and $values.enabled $values.autoscaling.enabled }}
{{- if gt (int $values.autoscaling.maxReplicas) (int $.Values.partitions) }}
{{- fail (printf "%s.autoscaling.maxReplicas (%v) is more than partitions (%v): a member past the partition count holds no partition" $stage $values.autoscaling.maxReplicas $.Values.partitions) }}
{{- end }}
{{- if gt (int $values.autoscaling.minReplicas) (int $values.autoscaling.maxReplicas) }}
{{- fail (printf "%s.autoscaling.minReplicas (%v) is more than its maxReplicas (%v)" $stage $values.autoscaling.minReplicas $values.autoscaling.maxReplicas) }}
{{- end }}
{{- end }}
{{- if and $values.enabled (gt (int $values.replicas) (int $.Values.partitions)) }}
{{- fail (printf "%s.replicas (%v) is more than partitions (%v): a member past the partition count holds no partition" $stage $values.replicas $.Values.partitions) }}
{{- end }}
{{- end }}
{{- with .Values.gateway.autoscaling }}
{{- if and $.Values.gateway.enabled .enabled (gt (int .minReplicas) (int .maxReplicas)) }}
{{- fail (printf "gateway.autoscaling.minReplicas (%v) is more than its maxReplicas (%v)" .minReplicas .maxReplicas) }}
{{- end }}
{{- end }}
{{- with .Values.secrets.kafkaTls }}
{{- if and .name (or (and .certKey (not .keyKey)) (and .keyKey (not .certKey))) }}
{{- fail "secrets.kafkaTls: certKey and keyKey go together (mutual TLS), or neither" }}
{{- end }}
{{- end }}
{{- with .Values.secrets.storeTls }}
{{- if and .name (or (and .certKey (not .keyKey)) (and .keyKey (not .certKey))) }}
{{- fail "secrets.storeTls: certKey and keyKey go together (mutual TLS), or neither" }}
{{- end }}
{{- end }}
{{- end }}
