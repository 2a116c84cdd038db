{{/*
Chart name, truncated to 63 characters (some Kubernetes name fields are limited to this).
*/}}
{{- define "eve-platform.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Fully qualified name prefix of every object: fullnameOverride, else the release name when it
already contains the chart name, else "<release>-<chart>". Truncated to 63 characters.
*/}}
{{- define "eve-platform.fullname" -}}
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

{{/*
"<fullname>-<suffix>", keeping the whole name within 63 characters.
Usage: include "eve-platform.componentName" (list . "mlflow")
*/}}
{{- define "eve-platform.componentName" -}}
{{- $ctx := index . 0 -}}
{{- $suffix := index . 1 -}}
{{- $max := sub 62 (len $suffix) | int -}}
{{- printf "%s-%s" (include "eve-platform.fullname" $ctx | trunc $max | trimSuffix "-") $suffix -}}
{{- end -}}

{{/*
Chart label value: "<chart>-<version>".
*/}}
{{- define "eve-platform.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Selector labels of one component (operator, mlflow, test).
Usage: include "eve-platform.selectorLabels" (list . "operator")
*/}}
{{- define "eve-platform.selectorLabels" -}}
{{- $ctx := index . 0 -}}
app.kubernetes.io/name: {{ include "eve-platform.name" $ctx }}
app.kubernetes.io/instance: {{ $ctx.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/*
Standard labels of every object (app.kubernetes.io/*, helm.sh/chart, commonLabels).
Usage: include "eve-platform.labels" (list . "operator")
*/}}
{{- define "eve-platform.labels" -}}
{{- $ctx := index . 0 -}}
{{ include "eve-platform.selectorLabels" . }}
app.kubernetes.io/version: {{ $ctx.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: eve-platform
app.kubernetes.io/managed-by: {{ $ctx.Release.Service }}
helm.sh/chart: {{ include "eve-platform.chart" $ctx }}
{{- with $ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
Name of the operator's ServiceAccount.
*/}}
{{- define "eve-platform.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "eve-platform.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
Namespaces whose EvePipelines the operator reconciles: watchNamespaces, or the release
namespace in a namespaced install, or none (= all namespaces).
*/}}
{{- define "eve-platform.watchNamespaces" -}}
{{- if .Values.watchNamespaces -}}
{{- toYaml .Values.watchNamespaces -}}
{{- else if .Values.rbac.namespaced -}}
{{- toYaml (list .Release.Namespace) -}}
{{- else -}}
[]
{{- end -}}
{{- end -}}

{{/*
Image references; the tag defaults to the chart's appVersion.
*/}}
{{- define "eve-platform.operatorImage" -}}
{{- printf "%s:%s" .Values.operator.image.repository (default .Chart.AppVersion .Values.operator.image.tag) -}}
{{- end -}}
{{- define "eve-platform.trainerImage" -}}
{{- printf "%s:%s" .Values.trainer.image.repository (default .Chart.AppVersion .Values.trainer.image.tag) -}}
{{- end -}}

{{/*
"true" when the in-cluster MLflow server is deployed: mlflow.enabled, or (auto, when it is
null) no external mlflow.trackingUri.
*/}}
{{- define "eve-platform.mlflow.enabled" -}}
{{- $enabled := .Values.mlflow.enabled -}}
{{- if kindIs "invalid" $enabled -}}
{{- ternary "true" "" (empty .Values.mlflow.trackingUri) -}}
{{- else -}}
{{- ternary "true" "" $enabled -}}
{{- end -}}
{{- end -}}

{{/*
The MLflow tracking URI the operator and the pipelines use.
*/}}
{{- define "eve-platform.mlflow.trackingUri" -}}
{{- if .Values.mlflow.trackingUri -}}
{{- .Values.mlflow.trackingUri -}}
{{- else if include "eve-platform.mlflow.enabled" . -}}
{{- printf "http://%s.%s.svc:%d" (include "eve-platform.componentName" (list . "mlflow")) .Release.Namespace (int .Values.mlflow.service.port) -}}
{{- end -}}
{{- end -}}

{{/*
Root URL of pipeline outputs: s3://<bucket>/<prefix>.
*/}}
{{- define "eve-platform.outputUrl" -}}
{{- $prefix := trimAll "/" .Values.storage.s3.prefix -}}
{{- if $prefix -}}
{{- printf "s3://%s/%s" .Values.storage.s3.bucket $prefix -}}
{{- else -}}
{{- printf "s3://%s" .Values.storage.s3.bucket -}}
{{- end -}}
{{- end -}}

{{/*
S3 environment shared by the operator and the MLflow server: endpoint, region and the
credentials, always by reference to the existing Secret (never inline).
*/}}
{{- define "eve-platform.s3Env" -}}
{{- with .Values.storage.s3.endpoint }}
- name: AWS_ENDPOINT_URL
  value: {{ . | quote }}
- name: EVE_S3_ENDPOINT
  value: {{ . | quote }}
- name: MLFLOW_S3_ENDPOINT_URL
  value: {{ . | quote }}
{{- end }}
- name: AWS_REGION
  value: {{ .Values.storage.s3.region | quote }}
- name: AWS_DEFAULT_REGION
  value: {{ .Values.storage.s3.region | quote }}
{{- end -}}

{{/*
S3 access keys from a Secret, by reference: (list . "<secret name>"); nothing for "".
*/}}
{{- define "eve-platform.s3KeysEnv" -}}
{{- $ := index . 0 -}}
{{- with index . 1 }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.storage.s3.credentialsSecret.accessKeyIdKey }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.storage.s3.credentialsSecret.secretAccessKeyKey }}
{{- end }}
{{- end -}}

{{/*
The Secret with the operator's own S3 credentials; "" with operator.s3Identity=serviceAccount
(IRSA, workload identity: the ServiceAccount's annotations give the pod its cloud identity).
*/}}
{{- define "eve-platform.operatorCredentialsSecret" -}}
{{- if eq .Values.operator.s3Identity "secret" -}}
{{- default .Values.storage.s3.credentialsSecret.name .Values.operator.credentialsSecret -}}
{{- end -}}
{{- end -}}

{{/*
RBAC rules of the operator on namespaced resources. Defined once; used by the ClusterRole
(cluster-wide install) and by the Role in each watched namespace (rbac.namespaced, or
watchNamespaces set). tests/deploy asserts this exact rule set. What the code calls
(operator/eve_operator/kube.py and kopf): the job API (create, get, patch, delete, list, watch),
pods list (exit codes and termination messages; no get, no watch, no logs), EvePipelines and
their status, Events.
*/}}
{{/*
"true" when the operator's rules go into Roles (rbac.namespaced, or named watchNamespaces).
*/}}
{{- define "eve-platform.rbac.namespaced" -}}
{{- ternary "true" "" (or .Values.rbac.namespaced (not (empty .Values.watchNamespaces))) -}}
{{- end -}}

{{/*
The install-time rules (policy-configmap.yaml), as env entries of the operator. The operator's
namespace is the ConfigMap's own (the operator gets it from the downward API).
*/}}
{{- define "eve-platform.policyData" -}}
EVE_POD_POLICY: {{ toJson .Values.podPolicy | quote }}
EVE_OPERATOR_SERVICE_ACCOUNT: {{ include "eve-platform.serviceAccountName" . | quote }}
EVE_S3_ENDPOINT: {{ .Values.storage.s3.endpoint | quote }}
EVE_S3_ALLOWED_ENDPOINTS: {{ join "," .Values.operator.s3.allowedEndpoints | quote }}
EVE_S3_ALLOWED_BUCKETS: {{ join "," (prepend .Values.operator.s3.allowedBuckets .Values.storage.s3.bucket | uniq) | quote }}
EVE_READ_PIPELINE_SECRETS: {{ .Values.operator.readPipelineSecrets | quote }}
EVE_GANG_SCHEDULER: {{ .Values.scheduling.gangScheduler | quote }}
EVE_QUEUE: {{ .Values.scheduling.queue | quote }}
EVE_REQUIRE_GANG_SCHEDULER: {{ .Values.scheduling.required | quote }}
{{- end -}}
{{- define "eve-platform.rbac.namespacedRules" -}}
- apiGroups: ["eve-platform.io"]
  resources: ["evepipelines"]
  verbs: ["get", "list", "watch", "patch", "update"]
- apiGroups: ["eve-platform.io"]
  resources: ["evepipelines/status"]
  verbs: ["get", "patch", "update"]
- apiGroups: ["eve-platform.io"]
  resources: ["evepipelines/finalizers"]
  verbs: ["update"]
- apiGroups: ["kubeflow.org"]
  resources: ["pytorchjobs"]
  verbs: ["get", "list", "watch", "create", "delete", "patch"]
{{- if .Values.trainJob.enabled }}
- apiGroups: ["trainer.kubeflow.org"]
  resources: ["trainjobs"]
  verbs: ["get", "list", "watch", "create", "delete", "patch"]
{{- end }}
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end -}}

{{/*
Only with operator.readPipelineSecrets: read the S3 credentials Secret a pipeline names, to
verify its manifests with the pipeline's own keys. Always in a Role per watched namespace,
never cluster-wide (role-secrets.yaml).
*/}}
{{- define "eve-platform.rbac.secretRules" -}}
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
{{- end -}}

{{/*
RBAC rules on cluster-scoped resources: kopf reads CRDs for resource discovery. kopf runs in
--standalone mode (no peering), so no kopf.dev rules are needed.
*/}}
{{- define "eve-platform.rbac.clusterRules" -}}
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["get", "list", "watch"]
{{- if .Values.trainJob.enabled }}
- apiGroups: ["trainer.kubeflow.org"]
  resources: ["clustertrainingruntimes"]
  verbs: ["get", "list", "watch"]
{{- end }}
{{- end -}}

{{/*
Fail early, with a message that says what to change, on value combinations the schema
cannot express.
*/}}
{{- define "eve-platform.validateConfig" -}}
{{- if and (eq (toString .Values.mlflow.enabled) "true") .Values.mlflow.trackingUri -}}
{{- fail (printf "mlflow.enabled=true deploys an in-cluster MLflow server, but mlflow.trackingUri=%q points elsewhere: set one of them" .Values.mlflow.trackingUri) -}}
{{- end -}}
{{- if include "eve-platform.mlflow.enabled" . -}}
{{- if and (eq .Values.mlflow.backendStore.type "postgres") (not .Values.mlflow.backendStore.postgres.existingSecret) -}}
{{- fail "mlflow.backendStore.type=postgres needs mlflow.backendStore.postgres.existingSecret: the name of a Secret holding the database URL" -}}
{{- end -}}
{{- if and .Values.mlflow.ingress.enabled (not .Values.mlflow.ingress.host) -}}
{{- fail "mlflow.ingress.enabled=true needs mlflow.ingress.host" -}}
{{- end -}}
{{- end -}}
{{- if and (not .Values.serviceAccount.create) (not .Values.serviceAccount.name) -}}
{{- fail "serviceAccount.create=false needs serviceAccount.name: the existing ServiceAccount of the operator" -}}
{{- end -}}
{{- if and .Values.mlflow.artifactsDestination (not (regexMatch "^[a-z0-9]+://" .Values.mlflow.artifactsDestination)) -}}
{{- fail (printf "mlflow.artifactsDestination=%q must be a URL such as s3://bucket/mlflow-artifacts" .Values.mlflow.artifactsDestination) -}}
{{- end -}}
{{- if and .Values.operator.readPipelineSecrets .Values.rbac.create (not (include "eve-platform.watchNamespaces" . | fromYamlArray)) -}}
{{- fail "operator.readPipelineSecrets=true grants reading Secrets only in named namespaces: set watchNamespaces (or rbac.namespaced=true for the release namespace); a cluster-wide Secret grant is not offered" -}}
{{- end -}}
{{- if and (eq .Values.operator.s3Identity "secret") (not (include "eve-platform.operatorCredentialsSecret" .)) -}}
{{- fail "operator.s3Identity=secret needs operator.credentialsSecret or storage.s3.credentialsSecret.name; or set operator.s3Identity=serviceAccount (IRSA / workload identity via serviceAccount.annotations)" -}}
{{- end -}}
{{- if and (eq .Values.trainJob.defaultJobApi "TrainJob") (not .Values.trainJob.enabled) -}}
{{- fail "trainJob.defaultJobApi=TrainJob needs trainJob.enabled=true (the ClusterTrainingRuntime and the operator's RBAC for trainjobs)" -}}
{{- end -}}
{{- if and .Values.mlflow.auth.enabled (not .Values.mlflow.auth.existingSecret) -}}
{{- fail "mlflow.auth.enabled=true needs mlflow.auth.existingSecret: a Secret with basic_auth.ini, username and password (docs/install.md#security-model)" -}}
{{- end -}}
{{- if eq (int .Values.operator.metricsPort) (int .Values.operator.healthPort) -}}
{{- fail (printf "operator.metricsPort and operator.healthPort must differ (both %d)" (int .Values.operator.metricsPort)) -}}
{{- end -}}
{{- end -}}
