{{/* Names, labels and the Pod-Security restricted contexts every Stockade Pod uses. */}}

{{- define "stockade.fullname" -}}
{{- if contains "stockade" .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-stockade" .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "stockade.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "stockade.labels" -}}
app.kubernetes.io/part-of: stockade
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "gateway") */}}
{{- define "stockade.selector" -}}
app.kubernetes.io/name: stockade
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "stockade.enhanced" -}}
{{- if eq .Values.security.mode "enhanced" -}}true{{- end -}}
{{- end -}}

{{- define "stockade.certManager" -}}
{{- if or (eq .Values.security.mode "basic") (eq .Values.security.mode "enhanced") -}}true{{- end -}}
{{- end -}}

{{/* Whether an enhanced component is deployed: (dict "root" $ "name" "keycloak") */}}
{{- define "stockade.wants" -}}
{{- if and (eq .root.Values.security.mode "enhanced") (not (has .name .root.Values.security.omit)) -}}true{{- end -}}
{{- end -}}

{{/* Pod-level securityContext: Pod Security "restricted". */}}
{{- define "stockade.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.podSecurity.runAsUser }}
runAsGroup: {{ .Values.podSecurity.runAsGroup }}
fsGroup: {{ .Values.podSecurity.runAsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Container-level securityContext: Pod Security "restricted". */}}
{{- define "stockade.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
privileged: false
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Linkerd injection in enhanced mode. */}}
{{- define "stockade.podAnnotations" -}}
{{- if eq .Values.security.mode "enhanced" }}
linkerd.io/inject: enabled
config.linkerd.io/default-inbound-policy: all-authenticated
{{- end }}
{{- end -}}

{{/* Which peers each service calls over gRPC (each gets a token with that audience). */}}
{{- define "stockade.peers" -}}
{{- $peers := dict "identity" (list) "authz" (list) "gateway" (list "identity" "authz") "broker" (list "identity" "authz" "audit") "shield" (list) "audit" (list) "secretsync" (list) -}}
{{- toJson $peers -}}
{{- end -}}

{{/* Services that log in to Vault with a projected token of audience "vault". */}}
{{- define "stockade.vaultClients" -}}
{{- toJson (list "gateway" "broker" "secretsync" "identity") -}}
{{- end -}}

{{/* gateway.host_key_files: the copies the host-keys init container writes (a JSON list). */}}
{{- define "stockade.hostKeyFiles" -}}
{{- $files := list -}}
{{- range .Values.ssh.hostKeys.keys }}{{ $files = append $files (printf "/var/run/secrets/stockade/host-keys/%s" .) }}{{ end -}}
{{- toJson $files -}}
{{- end -}}
