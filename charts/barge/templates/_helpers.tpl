{{/* Object-name prefix: "<release>-barge", or the release name when it already says barge. */}}
{{- define "barge.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "barge.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "barge.coordinator.fullname" -}}{{ include "barge.fullname" . }}-coordinator{{- end -}}
{{- define "barge.agent.fullname" -}}{{ include "barge.fullname" . }}-agent{{- end -}}

{{/* Labels on every object. */}}
{{- define "barge.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "barge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: barge
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component (coordinator or agent); never change after install. */}}
{{- define "barge.selectorLabels" -}}
app.kubernetes.io/name: {{ include "barge.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "barge.componentLabels" -}}
{{ include "barge.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "barge.coordinator.serviceAccountName" -}}
{{- if .Values.serviceAccount.coordinator.create -}}
{{- default (include "barge.coordinator.fullname" .) .Values.serviceAccount.coordinator.name -}}
{{- else -}}
{{- required "serviceAccount.coordinator.name is required when serviceAccount.coordinator.create is false" .Values.serviceAccount.coordinator.name -}}
{{- end -}}
{{- end -}}

{{- define "barge.agent.serviceAccountName" -}}
{{- if .Values.serviceAccount.agent.create -}}
{{- default (include "barge.agent.fullname" .) .Values.serviceAccount.agent.name -}}
{{- else -}}
{{- required "serviceAccount.agent.name is required when serviceAccount.agent.create is false" .Values.serviceAccount.agent.name -}}
{{- end -}}
{{- end -}}

{{/* The Barge image reference: repository@digest, else repository:tag (tag defaults to appVersion). */}}
{{- define "barge.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The Secret with the coordinator's serving certificate (tls.crt, tls.key) and the CA (ca.crt). */}}
{{- define "barge.tls.secretName" -}}
{{- if eq .Values.tls.mode "existingSecret" -}}
{{- required "tls.existingSecret is required when tls.mode is existingSecret" .Values.tls.existingSecret -}}
{{- else -}}
{{- include "barge.coordinator.fullname" . }}-tls
{{- end -}}
{{- end -}}

{{/* DNS name the agents dial, and which the serving certificate must cover. */}}
{{- define "barge.coordinator.address" -}}
{{ include "barge.coordinator.fullname" . }}.{{ .Release.Namespace }}.svc
{{- end -}}

{{- define "barge.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets -}}
imagePullSecrets:
{{- toYaml . | nindent 2 }}
{{- end -}}
{{- end -}}

{{/* The coordinator's config file; its checksum rolls the pods when it changes. */}}
{{- define "barge.config" -}}
{{- /* repository settings are the agents' (they create repositories): passed as agent flags */ -}}
{{- $config := omit (deepCopy .Values.config) "repository" "repositoryPasswordSecret" -}}
{{- $_ := set $config "image" (default (include "barge.image" .) .Values.config.image) -}}
{{- toYaml $config -}}
{{- end -}}

{{/* Soft: spread the coordinator replicas over nodes when possible, still schedule on one node. */}}
{{- define "barge.coordinator.antiAffinity" -}}
preferredDuringSchedulingIgnoredDuringExecution:
  - weight: 100
    podAffinityTerm:
      topologyKey: kubernetes.io/hostname
      labelSelector:
        matchLabels:
          {{- include "barge.selectorLabels" (dict "root" . "component" "coordinator") | nindent 10 }}
{{- end -}}
