{{/* The chart name, or nameOverride. */}}
{{- define "mcs-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The prefix of every object name: fullnameOverride, else the release name when it already holds
the chart name, else <release>-<chart>.
*/}}
{{- define "mcs-operator.fullname" -}}
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

{{/* The helm.sh/chart label value. */}}
{{- define "mcs-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "mcs-operator.labels" -}}
helm.sh/chart: {{ include "mcs-operator.chart" . }}
{{ include "mcs-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: mcs-operator
{{- end }}

{{/* The labels that select the operator Pods. */}}
{{- define "mcs-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mcs-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The ServiceAccount the operator runs as. */}}
{{- define "mcs-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "mcs-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The leader Lease's name. */}}
{{- define "mcs-operator.leaseName" -}}
{{- default (include "mcs-operator.fullname" .) .Values.leaderElection.leaseName }}
{{- end }}

{{/* The storage PersistentVolumeClaim the chart makes (storage.type pvc). */}}
{{- define "mcs-operator.pvcName" -}}
{{- printf "%s-storage" (include "mcs-operator.fullname" .) }}
{{- end }}

{{/*
The Deployment strategy: strategy.type, or when empty Recreate for a single replica on storage
that may be ReadWriteOnce (a new PVC with ReadWriteOnce/ReadWriteOncePod, or an existing
claim whose access modes the chart cannot see), RollingUpdate otherwise.
*/}}
{{- define "mcs-operator.strategyType" -}}
{{- if .Values.strategy.type }}
{{- .Values.strategy.type }}
{{- else }}
{{- $rwo := false }}
{{- if eq .Values.storage.type "existingClaim" }}
{{- $rwo = true }}
{{- else if eq .Values.storage.type "pvc" }}
{{- $modes := .Values.storage.pvc.accessModes }}
{{- $rwo = or (has "ReadWriteOnce" $modes) (has "ReadWriteOncePod" $modes) }}
{{- end }}
{{- if and $rwo (le (int .Values.replicas) 1) }}Recreate{{ else }}RollingUpdate{{ end }}
{{- end }}
{{- end }}
