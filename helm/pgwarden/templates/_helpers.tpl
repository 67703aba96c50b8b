{{/* The object name prefix: the release name (Services `<release>-primary`, pods
`<release>-0`, ...). Capped at 52 characters: StatefulSet pods add `-<ordinal>` and the
controller-revision-hash label adds 11 more to a name that must fit in 63. */}}
{{- define "pgwarden.fullname" -}}
{{- default .Release.Name .Values.fullnameOverride | trunc 52 | trimSuffix "-" -}}
{{- end -}}

{{- define "pgwarden.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Patroni's `scope`: the cluster's name in the store and in the scope label. */}}
{{- define "pgwarden.scope" -}}
{{- default (include "pgwarden.fullname" .) .Values.scope -}}
{{- end -}}

{{- define "pgwarden.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "pgwarden.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of one component (`postgresql`, `pgbouncer`, `pgbackrest`). */}}
{{- define "pgwarden.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pgwarden.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* What a PostgreSQL member Pod must carry for pgwarden to find it: `kubernetes.labels` and
the scope label (docs/kubernetes.md), beside the chart's selector labels. The role label is
not here: pgwarden sets it, and a StatefulSet selector must not name a label that changes. */}}
{{- define "pgwarden.memberLabels" -}}
{{ include "pgwarden.selectorLabels" (dict "root" . "component" "postgresql") }}
{{- range $k, $v := .Values.kubernetes.labels }}
{{ $k }}: {{ $v | quote }}
{{- end }}
{{ .Values.kubernetes.scopeLabel }}: {{ include "pgwarden.scope" . | quote }}
{{- end -}}

{{- define "pgwarden.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "pgwarden.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "pgwarden.secretName" -}}
{{- default (printf "%s-secret" (include "pgwarden.fullname" .)) .Values.existingSecret -}}
{{- end -}}

{{- define "pgwarden.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "pgwarden.pgbackrestImage" -}}
{{- $repo := default .Values.image.repository .Values.pgbackrest.image.repository -}}
{{- $tag := default (default .Chart.AppVersion .Values.image.tag) .Values.pgbackrest.image.tag -}}
{{- printf "%s:%s" $repo $tag -}}
{{- end -}}

{{- define "pgwarden.headless" -}}
{{- printf "%s-members" (include "pgwarden.fullname" .) -}}
{{- end -}}

{{- define "pgwarden.repoHost" -}}
{{- printf "%s-repo-host" (include "pgwarden.fullname" .) -}}
{{- end -}}

{{/* The repository host's DNS name, as its pods and the PostgreSQL pods resolve it. */}}
{{- define "pgwarden.repoHostFqdn" -}}
{{- printf "%s-0.%s.%s.svc" (include "pgwarden.repoHost" .) (include "pgwarden.repoHost" .) .Release.Namespace -}}
{{- end -}}

{{/* The seconds a PostgreSQL pod gets between SIGTERM and SIGKILL (see the StatefulSet). */}}
{{- define "pgwarden.gracePeriod" -}}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds -}}
{{- $d := mergeOverwrite (deepCopy .Values.dcs) .Values.extraDcs -}}
{{- $handover := min (int $d.shutdown_handover_timeout) (int $d.ttl) -}}
{{- add (int .Values.postgresql.pgCtlTimeout) $handover (int $d.loop_wait) -}}
{{- else -}}
{{- .Values.terminationGracePeriodSeconds -}}
{{- end -}}
{{- end -}}
