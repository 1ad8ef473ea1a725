{{/*
Pieces shared by the services' templates. Most take a "service context":
  (dict "root" $ "name" "inpainter" "values" .Values.inpainter "config" <the ConfigMap's data, a string>)
built at the top of each service's template file.
*/}}

{{- define "tire.name" -}}
{{- .Values.nameOverride | default .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* <release>-tire, or the release name alone when it already contains the chart's name. */}}
{{- define "tire.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains (include "tire.name" .) .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "tire.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/* The objects' name of one service: <fullname>-<service>. Takes a service context. */}}
{{- define "tire.componentName" -}}
{{- printf "%s-%s" (include "tire.fullname" .root) .name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels that select one service's pods. Takes a service context. */}}
{{- define "tire.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tire.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .name }}
{{- end }}

{{/* Labels of every object of one service. Takes a service context. */}}
{{- define "tire.labels" -}}
{{ include "tire.selectorLabels" . }}
app.kubernetes.io/part-of: tire
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{- end }}

{{/* Labels that select every pod of the release (the stages, the coordinator and MinIO). */}}
{{- define "tire.releaseSelectorLabels" -}}
app.kubernetes.io/name: {{ include "tire.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "tire.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- include "tire.fullname" . }}
{{- else }}
{{- .Values.serviceAccount.name | default "default" }}
{{- end }}
{{- end }}

{{/* <registry>/<repository>:<tag> of a service's image. Takes a service context. */}}
{{- define "tire.image" -}}
{{- $image := .root.Values.image -}}
{{- $tag := .values.image.tag | default $image.tag | default .root.Chart.AppVersion -}}
{{- if $image.registry }}
{{- printf "%s/%s:%s" (trimSuffix "/" $image.registry) .values.image.repository $tag }}
{{- else }}
{{- printf "%s:%s" .values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* "true" when Triton serves this stage's models (triton.enabled and the stage in triton.stages), else
empty. Takes a service context. */}}
{{- define "tire.usesTriton" -}}
{{- if and .root.Values.triton.enabled (has .name .root.Values.triton.stages) }}true{{ end }}
{{- end }}

{{/* GPUs one service's pods request: its `gpu` when GPUs are enabled, else 0; none for a stage whose models
Triton serves (Triton's pods hold the GPUs). Takes a service context. */}}
{{- define "tire.gpus" -}}
{{- if and .root.Values.gpu.enabled (not (include "tire.usesTriton" .)) }}{{ int (.values.gpu | default 0) }}
{{- else }}0{{ end }}
{{- end }}

{{/* A stage's TIRE_<STAGE>_BACKEND: `triton` when Triton serves its models, else `backend` with a GPU and
`cpuBackend` without. Takes a service context. */}}
{{- define "tire.backend" -}}
{{- if include "tire.usesTriton" . }}triton
{{- else if gt (include "tire.gpus" . | int) 0 }}{{ .values.backend }}
{{- else }}{{ .values.cpuBackend }}{{ end }}
{{- end }}

{{/* Triton's model repository as the CLI names it: s3://BUCKET/PREFIX in the chart's store. */}}
{{- define "tire.tritonRepository" -}}
{{- .Values.triton.repository | default (printf "s3://%s/triton" .Values.s3.bucket) | trimSuffix "/" }}
{{- end }}

{{/* The same repository as tritonserver's --model-repository names it: s3://[https://]HOST:PORT/BUCKET/PREFIX
(Triton speaks HTTP to an S3 endpoint unless the host is prefixed with https://). */}}
{{- define "tire.tritonModelRepository" -}}
{{- $scheme := ternary "https://" "" .Values.s3.secure }}
{{- printf "s3://%s%s/%s" $scheme (include "tire.s3Endpoint" .) (include "tire.tritonRepository" . | trimPrefix "s3://") }}
{{- end }}

{{/* The gRPC address (host:port) of Triton's Service, what a Triton stage's TIRE_<STAGE>_TRITON_URL names.
A ClusterIP Service is enough: tritonclient opens a connection per call, so calls spread over the pods. */}}
{{- define "tire.tritonUrl" -}}
{{- printf "%s:%v" (include "tire.componentName" (dict "root" . "name" "triton")) .Values.triton.ports.grpc }}
{{- end }}

{{/* The weights a Triton stage's versions serve: its model value (tracker: cotrackerCheckpoint). Takes a
service context. */}}
{{- define "tire.tritonWeights" -}}
{{- if eq .name "tracker" }}
{{- required "tracker.cotrackerCheckpoint is required when Triton serves the tracker: scaled_offline.pth as Triton sees it (s3://bucket/key, or a path on triton.modelVolume)." .values.cotrackerCheckpoint }}
{{- else }}
{{- required (printf "%s.model is required when Triton serves the %s: s3://bucket/prefix, a folder on triton.modelVolume or a hub id." .name .name) .values.model }}
{{- end }}
{{- end }}

{{/* The gRPC target the coordinator dials for a stage: its headless Service through the dns resolver, so
the client's round_robin policy spreads calls over every ready pod. Takes a service context. */}}
{{- define "tire.stageTarget" -}}
{{- printf "dns:///%s:%v" (include "tire.componentName" .) .root.Values.ports.grpc }}
{{- end }}

{{/* The Secret whose key `tokens` holds the coordinator's token entries: coordinator.auth.existingSecret,
else the chart's (coordinator-tokens.yaml). */}}
{{- define "tire.coordinatorTokensSecret" -}}
{{- .Values.coordinator.auth.existingSecret | default (printf "%s-coordinator-tokens" (include "tire.fullname" .)) }}
{{- end }}

{{/* The kubernetes.io/tls Secret the coordinator serves TLS with: coordinator.tls.secretName, else the
chart's self-signed one (coordinator-tls.yaml). */}}
{{- define "tire.coordinatorTlsSecret" -}}
{{- .Values.coordinator.tls.secretName | default (printf "%s-coordinator-tls" (include "tire.fullname" .)) }}
{{- end }}

{{/* The coordinator's job state: "postgresql" with database.existingSecret or the bundled
postgresql.enabled (postgresql.yaml), else "sqlite" (a file on the coordinator's volume). */}}
{{- define "tire.database" -}}
{{- if and .Values.database.existingSecret .Values.postgresql.enabled }}
{{- fail "database.existingSecret and postgresql.enabled both name the coordinator's database: set one of them." }}
{{- else if or .Values.database.existingSecret .Values.postgresql.enabled }}postgresql
{{- else }}sqlite{{ end }}
{{- end }}

{{/* With PostgreSQL, where the coordinator finds its database: a dict of "secret" and "urlKey" (the URL),
"passwordSecret" and "passwordKey" (the password, "" for none). database.existingSecret's, else the bundled
server's Secret (postgresql.yaml), which holds both. */}}
{{- define "tire.databaseSecrets" -}}
{{- $database := .Values.database }}
{{- if $database.existingSecret }}
{{- $passwordSecret := $database.passwordSecret | default $database.existingSecret }}
{{- toYaml (dict "secret" $database.existingSecret "urlKey" $database.urlKey "passwordSecret" $passwordSecret "passwordKey" ($database.passwordKey | default "")) }}
{{- else }}
{{- $name := include "tire.componentName" (dict "root" . "name" "postgresql") }}
{{- toYaml (dict "secret" $name "urlKey" "url" "passwordSecret" $name "passwordKey" "password") }}
{{- end }}
{{- end }}

{{- define "tire.s3SecretName" -}}
{{- .Values.s3.existingSecret | default (printf "%s-s3" (include "tire.fullname" .)) }}
{{- end }}

{{- define "tire.s3Endpoint" -}}
{{- if .Values.s3.endpoint }}
{{- .Values.s3.endpoint }}
{{- else if .Values.minio.enabled }}
{{- printf "%s-minio:%v" (include "tire.fullname" .) .Values.minio.port }}
{{- else }}
{{- fail "s3.endpoint is required when minio.enabled is false: give the external store's host:port." }}
{{- end }}
{{- end }}

{{/* One value of a TIRE_* variable as the services parse it. YAML numbers reach templates as float64, which
would print 2**26 as 6.7108864e+07: whole numbers print as integers. */}}
{{- define "tire.envValue" -}}
{{- if and (kindIs "float64" .) (eq . (floor .)) }}{{ int64 . }}{{ else }}{{ . }}{{ end }}
{{- end }}

{{/* ConfigMap data: <prefix><FIELD>: "<value>" for each field of `values` (a dict keyed by the settings
dataclasses' field names), sorted. (Helm drops keys set to null, so null restores the service's default.) */}}
{{- define "tire.envEntries" -}}
{{- $prefix := .prefix }}
{{- range $field, $value := .values }}
{{ printf "%s%s" $prefix (upper $field) }}: {{ include "tire.envValue" $value | quote }}
{{- end }}
{{- end }}

{{/* The ConfigMap data of one service: its own settings, its server settings (the chart owns the ports) and
the store's location. `fields` holds the settings the chart names (backend, model...); they override the
same names in `settings`. Takes a service context plus "fields". */}}
{{- define "tire.serviceConfig" -}}
{{- $root := .root }}
{{- $ports := dict "port" $root.Values.ports.grpc "metrics_port" $root.Values.ports.metrics }}
{{- $settings := .values.settings | default dict }}
{{- $fields := merge $ports (.fields | default dict) $settings (.values.server | default dict) }}
{{- include "tire.envEntries" (dict "prefix" (printf "TIRE_%s_" (upper .name)) "values" $fields) }}
TIRE_S3_ENDPOINT: {{ include "tire.s3Endpoint" $root | quote }}
TIRE_S3_BUCKET: {{ $root.Values.s3.bucket | quote }}
TIRE_S3_SECURE: {{ $root.Values.s3.secure | quote }}
TIRE_S3_REGION: {{ $root.Values.s3.region | quote }}
{{- end }}

{{- define "tire.configMap" -}}
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ include "tire.componentName" . }}
  labels:
    {{- include "tire.labels" . | nindent 4 }}
data:
  {{- .config | trim | nindent 2 }}
{{- end }}

{{/* Kubernetes' built-in gRPC probes against grpc.health.v1. A service reports NOT_SERVING until its model
is loaded and warmed up, which the startup probe allows `startupSeconds` for; liveness is lenient because
a probe waits for a free server thread behind long inference calls. Takes a service context, plus
"probePort" where health is served on a port of its own (the coordinator's: the kubelet's gRPC probes
speak no TLS). */}}
{{- define "tire.grpcProbes" -}}
{{- $port := int (.probePort | default .root.Values.ports.grpc) -}}
startupProbe:
  grpc:
    port: {{ $port }}
  periodSeconds: 10
  timeoutSeconds: 5
  failureThreshold: {{ max 1 (div (int .values.startupSeconds) 10) }}
readinessProbe:
  grpc:
    port: {{ $port }}
  periodSeconds: 5
  timeoutSeconds: 5
  failureThreshold: 2
livenessProbe:
  grpc:
    port: {{ $port }}
  periodSeconds: 20
  timeoutSeconds: 10
  failureThreshold: 6
{{- end }}

{{/*
The Deployment of one service. Besides the service context it takes:
  "strategy"      the Deployment strategy (default: `values.updateStrategy`, else a rolling update)
  "replicas"      a fixed replica count (default: `values.replicas`, or none under an HPA)
  "volumes", "volumeMounts"  more of them (lists)
  "env"           more container env entries, before `values.env` (a list of EnvVars)
  "ports"         more container ports (a list of ContainerPorts)
  "probePort"     the port the gRPC probes call (default: ports.grpc)
  "affinity"      the pod's affinity (default: `values.affinity`)
*/}}
{{- define "tire.deployment" -}}
{{- $root := .root }}
{{- $values := .values }}
{{- $gpus := include "tire.gpus" . | int }}
{{- $resources := deepCopy ($values.resources | default dict) }}
{{- $nodeSelector := deepCopy ($values.nodeSelector | default dict) }}
{{- $tolerations := $values.tolerations | default list }}
{{- if gt $gpus 0 }}
{{- $gpu := dict $root.Values.gpu.resourceName $gpus }}
{{- $_ := set $resources "requests" (merge (deepCopy $gpu) ($resources.requests | default dict)) }}
{{- $_ := set $resources "limits" (merge (deepCopy $gpu) ($resources.limits | default dict)) }}
{{- $nodeSelector = merge $nodeSelector ($root.Values.gpu.nodeSelector | default dict) }}
{{- $tolerations = concat $tolerations ($root.Values.gpu.tolerations | default list) }}
{{- end }}
{{- $graceSeconds := int (dig "grace_s" 30 ($values.server | default dict)) }}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "tire.componentName" . }}
  labels:
    {{- include "tire.labels" . | nindent 4 }}
spec:
  {{- if .replicas }}
  replicas: {{ .replicas }}
  {{- else if not (dig "autoscaling" "enabled" false $values) }}
  replicas: {{ $values.replicas }}
  {{- end }}
  revisionHistoryLimit: 3
  {{- with .strategy | default $values.updateStrategy }}
  strategy:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  selector:
    matchLabels:
      {{- include "tire.selectorLabels" . | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "tire.selectorLabels" . | nindent 8 }}
        app.kubernetes.io/part-of: tire
      annotations:
        # This service's configuration only: changing another service's settings leaves these pods alone.
        checksum/config: {{ .config | sha256sum }}
        {{- if $root.Values.prometheusAnnotations }}
        prometheus.io/scrape: "true"
        prometheus.io/port: {{ $root.Values.ports.metrics | quote }}
        {{- end }}
        {{- with $values.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      serviceAccountName: {{ include "tire.serviceAccountName" $root }}
      automountServiceAccountToken: false
      enableServiceLinks: false
      # In-flight calls get the server's grace_s after SIGTERM; the kubelet waits a little longer.
      terminationGracePeriodSeconds: {{ add $graceSeconds 15 }}
      securityContext:
        {{- toYaml $root.Values.podSecurityContext | nindent 8 }}
      {{- with $root.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      containers:
        - name: {{ .name }}
          image: {{ include "tire.image" . }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          envFrom:
            - configMapRef:
                name: {{ include "tire.componentName" . }}
          env:
            - name: TIRE_S3_ACCESS_KEY
              valueFrom:
                secretKeyRef:
                  name: {{ include "tire.s3SecretName" $root }}
                  key: {{ $root.Values.s3.accessKeyKey }}
            - name: TIRE_S3_SECRET_KEY
              valueFrom:
                secretKeyRef:
                  name: {{ include "tire.s3SecretName" $root }}
                  key: {{ $root.Values.s3.secretKeyKey }}
            # The root filesystem is read-only: numba's kernel cache and every ~/.cache (Hugging Face,
            # torch extensions) go to the /tmp emptyDir.
            - name: HOME
              value: /tmp
            - name: NUMBA_CACHE_DIR
              value: /tmp/numba
            {{- with .env }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
            {{- with $values.env }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          ports:
            - name: grpc
              containerPort: {{ $root.Values.ports.grpc }}
              protocol: TCP
            - name: metrics
              containerPort: {{ $root.Values.ports.metrics }}
              protocol: TCP
            {{- with .ports }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          {{- include "tire.grpcProbes" . | nindent 10 }}
          resources:
            {{- toYaml $resources | nindent 12 }}
          securityContext:
            {{- toYaml $root.Values.containerSecurityContext | nindent 12 }}
          volumeMounts:
            - name: tmp
              mountPath: /tmp
            {{- if $values.modelVolume }}
            - name: models
              mountPath: /models
              readOnly: true
            {{- end }}
            {{- with .volumeMounts }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
      volumes:
        - name: tmp
          emptyDir:
            sizeLimit: {{ $values.tmpSize }}
        {{- with $values.modelVolume }}
        - name: models
          {{- toYaml . | nindent 10 }}
        {{- end }}
        {{- with .volumes }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- with $nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .affinity | default $values.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
{{- end }}

{{/* A stage's Service: headless, so DNS lists every ready pod and gRPC clients balance calls over them
(a ClusterIP would pin each long-lived connection to one pod). Takes a service context. */}}
{{- define "tire.headlessService" -}}
apiVersion: v1
kind: Service
metadata:
  name: {{ include "tire.componentName" . }}
  labels:
    {{- include "tire.labels" . | nindent 4 }}
spec:
  clusterIP: None
  selector:
    {{- include "tire.selectorLabels" . | nindent 4 }}
  ports:
    - name: grpc
      port: {{ .root.Values.ports.grpc }}
      targetPort: grpc
      protocol: TCP
      appProtocol: grpc
    - name: metrics
      port: {{ .root.Values.ports.metrics }}
      targetPort: metrics
      protocol: TCP
{{- end }}

{{/* Ingress to a service's pods: gRPC from `from` (NetworkPolicyPeers; empty: anyone), metrics from
networkPolicy.metricsFrom. Takes a service context plus "from". */}}
{{- define "tire.networkPolicy" -}}
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: {{ include "tire.componentName" . }}
  labels:
    {{- include "tire.labels" . | nindent 4 }}
spec:
  podSelector:
    matchLabels:
      {{- include "tire.selectorLabels" . | nindent 6 }}
  policyTypes:
    - Ingress
  ingress:
    - ports:
        - port: grpc
          protocol: TCP
      {{- with .from }}
      from:
        {{- toYaml . | nindent 8 }}
      {{- end }}
    - ports:
        - port: metrics
          protocol: TCP
      {{- with .root.Values.networkPolicy.metricsFrom }}
      from:
        {{- toYaml . | nindent 8 }}
      {{- end }}
{{- end }}

{{/* A stage's NetworkPolicy: gRPC from the coordinator only. Takes a service context. */}}
{{- define "tire.stageNetworkPolicy" -}}
{{- $coordinator := dict "root" .root "name" "coordinator" }}
{{- $labels := include "tire.selectorLabels" $coordinator | fromYaml }}
{{- $peer := dict "podSelector" (dict "matchLabels" $labels) }}
{{- include "tire.networkPolicy" (merge (dict "from" (list $peer)) .) }}
{{- end }}

{{- define "tire.horizontalPodAutoscaler" -}}
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {{ include "tire.componentName" . }}
  labels:
    {{- include "tire.labels" . | nindent 4 }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: {{ include "tire.componentName" . }}
  minReplicas: {{ .values.autoscaling.minReplicas }}
  maxReplicas: {{ .values.autoscaling.maxReplicas }}
  metrics:
    {{- toYaml .values.autoscaling.metrics | nindent 4 }}
{{- end }}

{{- define "tire.podDisruptionBudget" -}}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "tire.componentName" . }}
  labels:
    {{- include "tire.labels" . | nindent 4 }}
spec:
  maxUnavailable: {{ .values.podDisruptionBudget.maxUnavailable }}
  selector:
    matchLabels:
      {{- include "tire.selectorLabels" . | nindent 6 }}
{{- end }}

{{/* Every object of a stage: ConfigMap, Deployment, headless Service, and, as configured, its NetworkPolicy,
HorizontalPodAutoscaler and PodDisruptionBudget. Takes a service context. */}}
{{- define "tire.stage" -}}
{{ include "tire.configMap" . }}
---
{{ include "tire.deployment" . }}
---
{{ include "tire.headlessService" . }}
{{- if .root.Values.networkPolicy.enabled }}
---
{{ include "tire.stageNetworkPolicy" . }}
{{- end }}
{{- if .values.autoscaling.enabled }}
---
{{ include "tire.horizontalPodAutoscaler" . }}
{{- end }}
{{- if .values.podDisruptionBudget.enabled }}
---
{{ include "tire.podDisruptionBudget" . }}
{{- end }}
{{- end }}

{{/* The web console's address as people open it: web.publicUrl, else https://<web.ingress.host> with the
ingress (http:// without its TLS), else http://localhost:<web.port>, as `kubectl port-forward` serves it. No
trailing slash: MinIO's CORS compares it with the pages' Origin header, character for character. */}}
{{- define "tire.webPublicUrl" -}}
{{- $web := .Values.web }}
{{- if $web.publicUrl }}{{ trimSuffix "/" $web.publicUrl }}
{{- else if $web.ingress.enabled }}{{ ternary "https" "http" $web.ingress.tls.enabled }}://{{ $web.ingress.host }}
{{- else }}http://localhost:{{ $web.port }}{{ end }}
{{- end }}

{{/* The store's origin as browsers reach it, where the console's pages upload through presigned URLs:
web.storeOrigin, else s3.publicEndpoint's (its own scheme, else https with s3.secure), else empty: presigned
URLs then name an address only the cluster reaches, and uploads go through the console. */}}
{{- define "tire.webStoreOrigin" -}}
{{- $public := trimSuffix "/" .Values.s3.publicEndpoint }}
{{- if .Values.web.storeOrigin }}{{ trimSuffix "/" .Values.web.storeOrigin }}
{{- else if contains "://" $public }}{{ $public }}
{{- else if $public }}{{ ternary "https" "http" .Values.s3.secure }}://{{ $public }}
{{- end }}
{{- end }}
