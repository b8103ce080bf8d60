{{- define "strata.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "strata.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "strata.labels" -}}
{{ include "strata.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "strata.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "strata.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "strata.clusterLabels" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}-{{ .component }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/part-of: {{ .root.Chart.Name }}
{{- end -}}

{{- define "strata.schedulerUrl" -}}
{{ ternary "https" "http" (not (empty .Values.cluster.tls.secretName)) }}://{{ include "strata.fullname" . }}-scheduler.{{ .Release.Namespace }}.svc:{{ .Values.cluster.scheduler.port }}
{{- end -}}

{{/* How a cluster pod's connections are protected: Strata's mutual TLS (cluster.tls.secretName)
or the service mesh's. Env entries, a volume mount and a volume. */}}
{{- define "strata.clusterTransportEnv" -}}
{{- if .Values.cluster.tls.secretName }}
- { name: STRATA__CLUSTER__TRANSPORT, value: "tls" }
- { name: STRATA__CLUSTER__TLS__CA_FILE, value: "/etc/strata/cluster-tls/ca.crt" }
- { name: STRATA__CLUSTER__TLS__CERT_FILE, value: "/etc/strata/cluster-tls/tls.crt" }
- { name: STRATA__CLUSTER__TLS__KEY_FILE, value: "/etc/strata/cluster-tls/tls.key" }
- { name: STRATA__CLUSTER__TLS__SERVER_NAME, value: {{ .Values.cluster.tls.serverName | quote }} }
{{- else }}
- { name: STRATA__CLUSTER__TRANSPORT, value: "mesh" }
{{- end }}
{{- end -}}

{{- define "strata.clusterTlsMount" -}}
{{- if .Values.cluster.tls.secretName }}
- { name: cluster-tls, mountPath: /etc/strata/cluster-tls, readOnly: true }
{{- end }}
{{- end -}}

{{- define "strata.clusterTlsVolume" -}}
{{- if .Values.cluster.tls.secretName }}
- name: cluster-tls
  secret: { secretName: {{ .Values.cluster.tls.secretName | quote }}, defaultMode: 0440 }
{{- end }}
{{- end -}}
