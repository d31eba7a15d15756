{{/* Names */}}
{{- define "plexus.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "plexus.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "plexus.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "plexus.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: plexus
{{- end -}}

{{/* Selector labels of one component: call with (dict "ctx" $ "component" "gateway") */}}
{{- define "plexus.selectorLabels" -}}
app.kubernetes.io/name: {{ include "plexus.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "plexus.componentLabels" -}}
{{ include "plexus.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "plexus.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "plexus.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "plexus.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "plexus.services" -}}gateway console runtime indexer tools{{- end -}}
{{/* Pods that run Plexus code (clients of the dependencies). */}}
{{- define "plexus.appComponents" -}}allinone gateway console runtime indexer tools migrate{{- end -}}

{{/* The public Service: the gateway in split mode, the single pod in allInOne mode. */}}
{{- define "plexus.publicService" -}}
{{- if eq .Values.deploymentMode "split" -}}
{{- printf "%s-gateway" (include "plexus.fullname" .) -}}
{{- else -}}
{{- include "plexus.fullname" . -}}
{{- end -}}
{{- end -}}

{{- define "plexus.secretsName" -}}
{{- default (printf "%s-secrets" (include "plexus.fullname" .)) .Values.secrets.existingSecret -}}
{{- end -}}
{{- define "plexus.generatedSecretName" -}}
{{- printf "%s-secrets" (include "plexus.fullname" .) -}}
{{- end -}}

{{/* Dependency kinds: "bundled", "external" or "embedded". */}}
{{- define "plexus.postgresql.kind" -}}
{{- if .Values.postgresql.enabled -}}bundled{{- else if .Values.postgresql.external.existingSecret -}}external{{- else -}}embedded{{- end -}}
{{- end -}}
{{- define "plexus.redis.kind" -}}
{{- if .Values.redis.enabled -}}bundled{{- else if or .Values.redis.external.url .Values.redis.external.existingSecret -}}external{{- else -}}embedded{{- end -}}
{{- end -}}
{{- define "plexus.nats.kind" -}}
{{- if .Values.nats.enabled -}}bundled{{- else if or .Values.nats.external.url .Values.nats.external.existingSecret -}}external{{- else -}}embedded{{- end -}}
{{- end -}}
{{- define "plexus.qdrant.kind" -}}
{{- if .Values.qdrant.enabled -}}bundled{{- else if .Values.qdrant.external.url -}}external{{- else -}}embedded{{- end -}}
{{- end -}}

{{/* Does the chart's generated Secret hold anything? */}}
{{- define "plexus.needsGeneratedSecret" -}}
{{- $v := .Values -}}
{{- if or (not $v.secrets.existingSecret) (and $v.postgresql.enabled (not $v.postgresql.auth.existingSecret)) $v.redis.enabled (and $v.qdrant.enabled (not $v.qdrant.apiKey.existingSecret)) -}}true{{- end -}}
{{- end -}}

{{/* One split service's effective values: split.defaults deep-merged with split.<service>. */}}
{{- define "plexus.svcValues" -}}
{{- $svc := index .ctx.Values.split .service | default dict -}}
{{- toYaml (mustMergeOverwrite (deepCopy .ctx.Values.split.defaults) (deepCopy $svc)) -}}
{{- end -}}

{{/* The pod-level securityContext, serviceAccount and pull secrets every Plexus pod shares. */}}
{{- define "plexus.podCommon" -}}
serviceAccountName: {{ include "plexus.serviceAccountName" . }}
automountServiceAccountToken: false
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Probes: (dict "ctx" $) */}}
{{- define "plexus.probes" -}}
{{- $p := .ctx.Values.probes -}}
startupProbe:
  httpGet: {path: {{ $p.startup.path | quote }}, port: http}
  periodSeconds: {{ $p.startup.periodSeconds }}
  failureThreshold: {{ $p.startup.failureThreshold }}
livenessProbe:
  httpGet: {path: {{ $p.liveness.path | quote }}, port: http}
  periodSeconds: {{ $p.liveness.periodSeconds }}
  timeoutSeconds: {{ $p.liveness.timeoutSeconds }}
  failureThreshold: {{ $p.liveness.failureThreshold }}
readinessProbe:
  httpGet: {path: {{ $p.readiness.path | quote }}, port: http}
  periodSeconds: {{ $p.readiness.periodSeconds }}
  timeoutSeconds: {{ $p.readiness.timeoutSeconds }}
  failureThreshold: {{ $p.readiness.failureThreshold }}
{{- end -}}

{{/*
Secret env of a Plexus container: (dict "ctx" $ "component" "gateway"). Every secret comes from a Secret
through valueFrom; composed URLs use $(VAR) expansion of a variable defined just before.
*/}}
{{- define "plexus.secretEnv" -}}
{{- $root := .ctx -}}
{{- $v := $root.Values -}}
{{- $c := .component -}}
{{- $full := include "plexus.fullname" $root -}}
{{- $gen := include "plexus.generatedSecretName" $root -}}
- name: PLEXUS_SECRET_KEY
  valueFrom: {secretKeyRef: {name: {{ include "plexus.secretsName" $root }}, key: {{ $v.secrets.secretKeyKey }}}}
- name: PLEXUS_INTERNAL_SECRET
  valueFrom: {secretKeyRef: {name: {{ include "plexus.secretsName" $root }}, key: {{ $v.secrets.internalSecretKey }}}}
{{- $pg := include "plexus.postgresql.kind" $root }}
{{- if eq $pg "external" }}
- name: PLEXUS_DATABASE_URL
  valueFrom: {secretKeyRef: {name: {{ $v.postgresql.external.existingSecret }}, key: {{ $v.postgresql.external.urlKey }}}}
{{- else if eq $pg "bundled" }}
- name: PG_PASSWORD
  valueFrom: {secretKeyRef: {name: {{ default $gen $v.postgresql.auth.existingSecret }}, key: {{ $v.postgresql.auth.passwordKey }}}}
- name: PLEXUS_DATABASE_URL
  value: {{ printf "postgresql+asyncpg://%s:$(PG_PASSWORD)@%s-postgresql:5432/%s" $v.postgresql.auth.username $full $v.postgresql.auth.database | quote }}
{{- end }}
{{- if $v.nats.external.existingSecret }}
- name: PLEXUS_NATS_URL
  valueFrom: {secretKeyRef: {name: {{ $v.nats.external.existingSecret }}, key: {{ $v.nats.external.urlKey }}}}
{{- end }}
{{- if has $c (list "gateway" "allinone") }}
{{- $rd := include "plexus.redis.kind" $root }}
{{- if eq $rd "bundled" }}
- name: REDIS_PASSWORD
  valueFrom: {secretKeyRef: {name: {{ $gen }}, key: redis-password}}
- name: PLEXUS_REDIS_URL
  value: {{ printf "redis://:$(REDIS_PASSWORD)@%s-redis:6379/0" $full | quote }}
{{- else if $v.redis.external.existingSecret }}
- name: PLEXUS_REDIS_URL
  valueFrom: {secretKeyRef: {name: {{ $v.redis.external.existingSecret }}, key: {{ $v.redis.external.urlKey }}}}
{{- end }}
{{- end }}
{{- if has $c (list "runtime" "indexer" "allinone") }}
{{- if $v.qdrant.enabled }}
- name: PLEXUS_KNOWLEDGE__QDRANT_API_KEY
  valueFrom: {secretKeyRef: {name: {{ default $gen $v.qdrant.apiKey.existingSecret }}, key: {{ $v.qdrant.apiKey.key }}}}
{{- else if $v.qdrant.external.apiKeySecret }}
- name: PLEXUS_KNOWLEDGE__QDRANT_API_KEY
  valueFrom: {secretKeyRef: {name: {{ $v.qdrant.external.apiKeySecret }}, key: {{ $v.qdrant.external.apiKeyKey }}}}
{{- end }}
{{- end }}
{{- end -}}

{{/* Refuse credentials in a plain URL value: they belong in a Secret. (dict "url" ... "where" ...) */}}
{{- define "plexus.noCredentials" -}}
{{- if and .url (contains "@" .url) -}}
{{- fail (printf "plexus: %s contains credentials; put the full URL in a Secret and set %s instead" .where (replace ".url" ".existingSecret" .where)) -}}
{{- end -}}
{{- end -}}
