{{/*
Chart name, or nameOverride. Truncated to 63 characters, the limit of a DNS label.
*/}}
{{- define "iris-token-broker.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name of the release's resources: fullnameOverride, or the release name joined with
the chart name unless the release name already contains it. Truncated to 63 characters.
*/}}
{{- define "iris-token-broker.fullname" -}}
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

{{/*
Chart name and version for the helm.sh/chart label, with '+' replaced as labels forbid it.
*/}}
{{- define "iris-token-broker.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Standard labels of every resource (the app.kubernetes.io/* set that Kubernetes recommends).
*/}}
{{- define "iris-token-broker.labels" -}}
helm.sh/chart: {{ include "iris-token-broker.chart" . }}
{{ include "iris-token-broker.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | quote }}
app.kubernetes.io/component: token-broker
app.kubernetes.io/part-of: iris-token-broker
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Labels that select the release's pods. They never change after install, because a
Deployment's selector is immutable.
*/}}
{{- define "iris-token-broker.selectorLabels" -}}
app.kubernetes.io/name: {{ include "iris-token-broker.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Name of the ServiceAccount that Vault's Kubernetes auth role is bound to.
*/}}
{{- define "iris-token-broker.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "iris-token-broker.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false: set it to the existing ServiceAccount that Vault's role is bound to" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Image reference: repository with the digest when one is set, else with the tag, which
defaults to the chart's appVersion.
*/}}
{{- define "iris-token-broker.image" -}}
{{- $repository := required "image.repository is required: set it to the registry path of the image built from the Dockerfile" .Values.image.repository }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" $repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" $repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/*
Path of the projected ServiceAccount token inside the container (VAULT_K8S_TOKEN_PATH).
*/}}
{{- define "iris-token-broker.vaultTokenPath" -}}
/var/run/secrets/iris-token-broker/vault/token
{{- end }}

{{/*
Path of Vault's CA bundle inside the container (VAULT_CACERT), when vault.caCert is set.
*/}}
{{- define "iris-token-broker.vaultCaPath" -}}
/etc/iris-token-broker/vault-ca/ca.crt
{{- end }}

{{/*
Check values that the schema cannot check with a message naming the value to set, and
stop the render on the first problem.
*/}}
{{- define "iris-token-broker.validate" -}}
{{- $_ := required "vault.addr is required: set it to the Vault address, such as https://vault.vault.svc:8200" .Values.vault.addr }}
{{- $_ := required "trackunit.scopes is required: set it to the app manifest's space-separated scopes, such as \"asset.view account.asset.manage\"" .Values.trackunit.scopes }}
{{- $_ := required "internalApiKeys.existingSecret is required: create a Secret holding the internal API keys and set its name here" .Values.internalApiKeys.existingSecret }}
{{- if eq .Values.vault.authMethod "kubernetes" }}
{{- $_ := required "vault.kubernetes.role is required when vault.authMethod is kubernetes: set it to the Vault role of the service" .Values.vault.kubernetes.role }}
{{- end }}
{{- if eq .Values.vault.authMethod "token" }}
{{- $_ := required "vault.tokenSecret.name is required when vault.authMethod is token: set it to an existing Secret holding the Vault token" .Values.vault.tokenSecret.name }}
{{- end }}
{{- if .Values.ingress.enabled }}
{{- $_ := required "ingress.host is required when ingress.enabled is true: set it to the public host name Trackunit calls" .Values.ingress.host }}
{{- if .Values.ingress.tls.enabled }}
{{- $_ := required "ingress.tls.secretName is required when ingress.tls.enabled is true: set it to the TLS Secret of ingress.host" .Values.ingress.tls.secretName }}
{{- end }}
{{- end }}
{{- $optionalScopes := splitList " " (.Values.trackunit.optionalScopes | replace "," " ") | compact }}
{{- range $scope := splitList " " (.Values.trackunit.scopes | replace "," " ") | compact }}
{{- if has $scope $optionalScopes }}
{{- fail (printf "trackunit.optionalScopes repeats %s from trackunit.scopes: list each scope once, in trackunit.scopes if required or in trackunit.optionalScopes if optional" $scope) }}
{{- end }}
{{- end }}
{{- /* The identity check is switched only by trackunit.identity.required, which the notes warn about. */}}
{{- range $env := .Values.extraSecretEnv }}
{{- if eq $env.name "REQUIRE_TRACKUNIT_IDENTITY" }}
{{- fail "extraSecretEnv REQUIRE_TRACKUNIT_IDENTITY is not allowed: set trackunit.identity.required instead" }}
{{- end }}
{{- end }}
{{- if hasKey .Values.extraEnv "REQUIRE_TRACKUNIT_IDENTITY" }}
{{- fail "extraEnv.REQUIRE_TRACKUNIT_IDENTITY is not allowed: set trackunit.identity.required instead" }}
{{- end }}
{{- range $name := list "INTERNAL_API_KEYS" "VAULT_TOKEN" }}
{{- if hasKey $.Values.extraEnv $name }}
{{- fail (printf "extraEnv.%s is not allowed because values are stored in clear: put it in a Secret (internalApiKeys.existingSecret or vault.tokenSecret.name)" $name) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Format a number value for the ConfigMap. Helm reads YAML numbers as float64, which print
in exponent form from seven digits on (1e+06), so whole numbers are printed as integers.
*/}}
{{- define "iris-token-broker.number" -}}
{{- if eq (float64 .) (float64 (int64 .)) }}{{ int64 . }}{{ else }}{{ . }}{{ end }}
{{- end }}

{{/*
Return "false" only when trackunit.identity.required is false, and "true" otherwise, so an
unset or deleted value keeps the callback check on.
*/}}
{{- define "iris-token-broker.identityRequired" -}}
{{- if eq (toString .Values.trackunit.identity.required) "false" }}false{{ else }}true{{ end }}
{{- end }}
