{{/*
Names, labels and the pieces every cleave pod shares: image, environment, volumes and the flags that reach the
control plane and the certificates. Each component's template adds only its own flags.
*/}}

{{- define "cleave.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "cleave.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "cleave.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of every object; call with (dict "root" $ "component" "router"). */}}
{{- define "cleave.labels" -}}
helm.sh/chart: {{ include "cleave.chart" .root }}
{{ include "cleave.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: cleave
{{- end -}}

{{- define "cleave.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cleave.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "cleave.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "cleave.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "cleave.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The worker pools to render: prefill and decode, or the one aggregated pool (the decode settings, role both). */}}
{{- define "cleave.pools" -}}
{{- if eq .Values.mode "aggregated" -}}
worker: decode
{{- else -}}
prefill: prefill
decode: decode
{{- end -}}
{{- end -}}

{{/* A pool's workload name; call with (dict "root" $ "pool" "prefill"). */}}
{{- define "cleave.poolName" -}}
{{- printf "%s-%s" (include "cleave.fullname" .root) .pool | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The etcd endpoints, comma-separated. */}}
{{- define "cleave.etcdEndpoints" -}}
{{- if .Values.etcd.bundled.enabled -}}
{{- printf "http://%s-etcd.%s.svc:2379" (include "cleave.fullname" .) .Release.Namespace -}}
{{- else -}}
{{- join "," .Values.etcd.external.endpoints -}}
{{- end -}}
{{- end -}}

{{/* Fails rendering on combinations the schema cannot express. */}}
{{- define "cleave.validate" -}}
{{- if and (not .Values.etcd.bundled.enabled) (empty .Values.etcd.external.endpoints) -}}
{{- fail "etcd: enable etcd.bundled or list etcd.external.endpoints" -}}
{{- end -}}
{{- if and .Values.etcd.bundled.enabled (not (empty .Values.etcd.external.endpoints)) -}}
{{- fail "etcd: etcd.external.endpoints is set while etcd.bundled.enabled is true; disable one" -}}
{{- end -}}
{{- if and .Values.etcd.external.tls.enabled (not .Values.etcd.external.tls.secretName) -}}
{{- fail "etcd.external.tls.enabled needs etcd.external.tls.secretName" -}}
{{- end -}}
{{- if and .Values.etcd.external.auth.username (not .Values.etcd.external.auth.passwordSecret.name) -}}
{{- fail "etcd.external.auth.username needs etcd.external.auth.passwordSecret.name" -}}
{{- end -}}
{{- if and .Values.tls.public.enabled (not .Values.tls.public.secretName) -}}
{{- fail "tls.public.enabled needs tls.public.secretName" -}}
{{- end -}}
{{- if and .Values.tls.cluster.enabled (not .Values.tls.cluster.secretName) -}}
{{- fail "tls.cluster.enabled needs tls.cluster.secretName" -}}
{{- end -}}
{{- if and .Values.apiKeys.enabled (not .Values.apiKeys.existingSecret) (empty .Values.apiKeys.keys) -}}
{{- fail "apiKeys.enabled needs apiKeys.existingSecret or apiKeys.keys" -}}
{{- end -}}
{{- if and (eq .Values.model.volume.type "pvc") (not .Values.model.volume.claimName) -}}
{{- fail "model.volume.type pvc needs model.volume.claimName" -}}
{{- end -}}
{{- if and (eq .Values.model.volume.type "hostPath") (not .Values.model.volume.hostPath) -}}
{{- fail "model.volume.type hostPath needs model.volume.hostPath" -}}
{{- end -}}
{{- if and .Values.planner.enabled (eq .Values.mode "aggregated") -}}
{{- $why := "the planner scales a prefill and a decode pool; scale an aggregated pool with workers.decode.replicas" -}}
{{- fail (printf "planner.enabled needs mode: disaggregated (%s)" $why) -}}
{{- end -}}
{{- if and .Values.planner.enabled (gt (int .Values.planner.gpuBudget) 0) -}}
{{- $prefillGpus := include "cleave.poolGpus" (dict "root" . "settings" "prefill") | int -}}
{{- $decodeGpus := include "cleave.poolGpus" (dict "root" . "settings" "decode") | int -}}
{{- $budget := int .Values.planner.gpuBudget -}}
{{- $floor := add (mul (int .Values.planner.prefill.min) $prefillGpus) (mul (int .Values.planner.decode.min) $decodeGpus) -}}
{{- if gt (int $floor) $budget -}}
{{- fail (printf "planner: the minimum replicas need %d GPUs, over planner.gpuBudget (%d)" (int $floor) $budget) -}}
{{- end -}}
{{- end -}}
{{- range $phase := list "prefill" "decode" -}}
{{- $b := index $.Values.planner $phase -}}
{{- if gt (int $b.min) (int $b.max) -}}
{{- fail (printf "planner.%s.min (%d) is above planner.%s.max (%d)" $phase (int $b.min) $phase (int $b.max)) -}}
{{- end -}}
{{- $p := index $.Values.workers $phase -}}
{{- $ranks := include "cleave.poolRanks" (dict "root" $ "settings" $phase) | int -}}
{{- if and (gt (int $p.gpus) 0) (lt (int $p.gpus) $ranks) -}}
{{- fail (printf "workers.%s.gpus (%d) is below the %d ranks of workers.%s.parallel" $phase (int $p.gpus) $ranks $phase) -}}
{{- end -}}
{{- $kinds := 0 -}}
{{- range $kind := list "tensor" "pipeline" "expert" "context" -}}
{{- if gt (int (index $p.parallel $kind | default 1)) 1 -}}{{- $kinds = add1 $kinds -}}{{- end -}}
{{- end -}}
{{- $tensorPipeline := and (gt (int $p.parallel.tensor) 1) (gt (int ($p.parallel.pipeline | default 1)) 1) (eq $kinds 2) -}}
{{- if and (gt $kinds 1) (not $tensorPipeline) -}}
{{- fail (printf "workers.%s.parallel: only tensor with pipeline combine (one kind per pool otherwise)" $phase) -}}
{{- end -}}
{{- if and (eq $phase "prefill") (gt (int ($p.parallel.pipeline | default 1)) 1) -}}
{{- fail "workers.prefill.parallel.pipeline: a prefill pool cannot be pipeline-parallel (its KV ships layer by layer from every stage)" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* A pool's device: its own, else the chart's. */}}
{{- define "cleave.poolDevice" -}}
{{- $p := index .root.Values.workers .settings -}}
{{- default .root.Values.device $p.device -}}
{{- end -}}

{{/* The ranks of a pool's parallel group: the product of its parallel kinds (1 when none). */}}
{{- define "cleave.poolRanks" -}}
{{- $p := index .root.Values.workers .settings -}}
{{- $ranks := 1 -}}
{{- range $kind := list "tensor" "pipeline" "expert" "context" -}}
{{- $ranks = mul $ranks (int (index $p.parallel $kind | default 1)) -}}
{{- end -}}
{{- $ranks -}}
{{- end -}}

{{/* A pool's GPUs per pod: workers.<pool>.gpus, else one per rank of its group on a cuda device, else 0. */}}
{{- define "cleave.poolGpus" -}}
{{- $p := index .root.Values.workers .settings -}}
{{- if gt (int $p.gpus) 0 -}}
{{- $p.gpus -}}
{{- else if regexMatch "^(cuda|gpu)" (include "cleave.poolDevice" .) -}}
{{- include "cleave.poolRanks" . -}}
{{- else -}}
0
{{- end -}}
{{- end -}}

{{/* Environment of every cleave container: model, control plane, tracing. Call with (dict "root" $ "service" NAME). */}}
{{- define "cleave.env" -}}
- name: CLEAVE_MODEL
  valueFrom:
    configMapKeyRef:
      name: {{ include "cleave.fullname" .root }}
      key: model
- name: CLEAVE_ETCD_ENDPOINTS
  valueFrom:
    configMapKeyRef:
      name: {{ include "cleave.fullname" .root }}
      key: etcd-endpoints
- name: CLEAVE_ETCD_PREFIX
  valueFrom:
    configMapKeyRef:
      name: {{ include "cleave.fullname" .root }}
      key: etcd-prefix
- name: CLEAVE_HOME
  value: {{ .root.Values.model.mountPath | quote }}
- name: HOME
  value: /tmp
{{- if and (not .root.Values.etcd.bundled.enabled) .root.Values.etcd.external.auth.username }}
- name: CLEAVE_ETCD_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .root.Values.etcd.external.auth.passwordSecret.name }}
      key: {{ .root.Values.etcd.external.auth.passwordSecret.key }}
{{- end }}
{{- if .root.Values.tracing.otlpEndpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ .root.Values.tracing.otlpEndpoint | quote }}
- name: OTEL_SERVICE_NAME
  value: {{ printf "cleave-%s" .service | quote }}
{{- end }}
{{- end -}}

{{/* Flags reaching etcd: endpoints, prefix, TLS and user. */}}
{{- define "cleave.etcdArgs" -}}
- --etcd=$(CLEAVE_ETCD_ENDPOINTS)
- --etcd-prefix=$(CLEAVE_ETCD_PREFIX)
{{- if not .Values.etcd.bundled.enabled }}
{{- if .Values.etcd.external.tls.enabled }}
- --etcd-ca=/etc/cleave/etcd-tls/ca.crt
{{- if .Values.etcd.external.tls.clientCert }}
- --etcd-cert=/etc/cleave/etcd-tls/tls.crt
- --etcd-key=/etc/cleave/etcd-tls/tls.key
{{- end }}
{{- end }}
{{- if .Values.etcd.external.auth.username }}
- --etcd-user={{ .Values.etcd.external.auth.username }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Flags for mutual TLS between router and workers. */}}
{{- define "cleave.clusterTlsArgs" -}}
{{- if .Values.tls.cluster.enabled }}
- --cluster-ca=/etc/cleave/cluster-tls/ca.crt
- --cluster-cert=/etc/cleave/cluster-tls/tls.crt
- --cluster-key=/etc/cleave/cluster-tls/tls.key
{{- with .Values.tls.cluster.serverName }}
- --cluster-server-name={{ . }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Volume mounts every cleave container gets. */}}
{{- define "cleave.volumeMounts" -}}
- name: model
  mountPath: {{ .Values.model.mountPath }}
  readOnly: {{ .Values.model.volume.readOnly }}
- name: tmp
  mountPath: /tmp
{{- if and (not .Values.etcd.bundled.enabled) .Values.etcd.external.tls.enabled }}
- name: etcd-tls
  mountPath: /etc/cleave/etcd-tls
  readOnly: true
{{- end }}
{{- if .Values.tls.cluster.enabled }}
- name: cluster-tls
  mountPath: /etc/cleave/cluster-tls
  readOnly: true
{{- end }}
{{- end -}}

{{/* The volumes behind cleave.volumeMounts. */}}
{{- define "cleave.volumes" -}}
- name: model
{{- if eq .Values.model.volume.type "pvc" }}
  persistentVolumeClaim:
    claimName: {{ .Values.model.volume.claimName }}
    readOnly: {{ .Values.model.volume.readOnly }}
{{- else if eq .Values.model.volume.type "hostPath" }}
  hostPath:
    path: {{ .Values.model.volume.hostPath }}
    type: Directory
{{- else }}
  emptyDir:
    sizeLimit: {{ .Values.model.volume.sizeLimit }}
{{- end }}
- name: tmp
  emptyDir: {}
{{- if and (not .Values.etcd.bundled.enabled) .Values.etcd.external.tls.enabled }}
- name: etcd-tls
  secret:
    secretName: {{ .Values.etcd.external.tls.secretName }}
    defaultMode: 0440
{{- end }}
{{- if .Values.tls.cluster.enabled }}
- name: cluster-tls
  secret:
    secretName: {{ .Values.tls.cluster.secretName }}
    defaultMode: 0440
{{- end }}
{{- end -}}

{{/* Pod-level settings shared by cleave pods. */}}
{{- define "cleave.podCommon" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end -}}

{{/* Annotations that restart pods when the shared configuration changes. */}}
{{- define "cleave.configChecksum" -}}
checksum/config: {{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
{{- end -}}
