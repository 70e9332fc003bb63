{{/* Name of the chart, for labels. */}}
{{- define "mailpipe.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Fully qualified name of release objects. */}}
{{- define "mailpipe.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Standard labels. */}}
{{- define "mailpipe.labels" -}}
app.kubernetes.io/name: {{ include "mailpipe.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: mailpipe
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "mailpipe.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mailpipe.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "mailpipe.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (printf "%s-operator" (include "mailpipe.fullname" .)) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "mailpipe.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The names of imagePullSecrets, comma-separated, for the operator to hand to relays. */}}
{{- define "mailpipe.pullSecretNames" -}}
{{- $names := list -}}
{{- range .Values.imagePullSecrets -}}
{{- $names = append $names .name -}}
{{- end -}}
{{- join "," $names -}}
{{- end -}}

{{/*
The operator's permissions, in two parts, so a cluster-wide install need not
hold write rights in every namespace (RBAC has no "deny", so the only way to
keep kube-system out is never to bind write verbs cluster-wide).

operatorWatchRules: what it needs wherever it watches: its own resources and
their status, Events on them, and a read-only watch of Deployments (RBAC cannot
filter by label; the operator itself selects app.kubernetes.io/managed-by=mailpipe).
*/}}
{{- define "mailpipe.operatorWatchRules" -}}
- apiGroups: ["mailpipe.io"]
  resources: ["sendingpools", "campaigns"]
  verbs: ["get", "list", "watch", "patch", "update"]
- apiGroups: ["mailpipe.io"]
  resources: ["sendingpools/status", "campaigns/status"]
  verbs: ["get", "patch", "update"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- if .Values.peering.enabled }}
- apiGroups: ["kopf.dev"]
  resources: ["kopfpeerings", "clusterkopfpeerings"]
  verbs: ["get", "list", "watch", "patch"]
{{- end }}
{{- end -}}

{{/*
operatorWorkloadRules: what it needs in a namespace where it runs relays. It
creates and deletes the relay Deployment, ConfigMap, Service and PDB by name;
it reads a ConfigMap or Secret only when a Campaign or SendingPool names it
(get by name: no list or watch, so it cannot enumerate them). It lists the
relay pods of a pool whose relays are missing, to say why in the pool's
status (read-only, no watch: relay_pods.py).
*/}}
{{- define "mailpipe.operatorWorkloadRules" -}}
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["create", "patch", "update", "delete"]
- apiGroups: [""]
  resources: ["configmaps", "services"]
  verbs: ["get", "create", "patch", "update", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "create", "patch", "update", "delete"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list"]
{{- end -}}

{{/*
Namespaces outside the release's own that the chart puts objects in (Roles,
RoleBindings), one per line: they must exist before `helm install`.
*/}}
{{- define "mailpipe.requiredNamespaces" -}}
{{- if .Values.operator.watchNamespaces }}
{{- join "\n" .Values.operator.watchNamespaces }}
{{- else if .Values.rbac.create }}
{{- join "\n" (without .Values.rbac.tenantNamespaces "*") }}
{{- end }}
{{- end -}}

{{/* The Secret with the key the operator signs relay configs with (configSigning). */}}
{{- define "mailpipe.configSigningSecret" -}}
{{- default (printf "%s-config-signing" (include "mailpipe.fullname" .)) .Values.configSigning.existingSecret -}}
{{- end -}}
