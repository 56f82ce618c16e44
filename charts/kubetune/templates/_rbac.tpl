{{/*
The operator's permissions: exactly the calls it (and kopf for it) makes, and
nothing on Secrets. The same rules go into the ClusterRole (watchNamespaces
empty) or into a Role in each watched namespace. tests/chart proves them by
running the operator with this ServiceAccount's token through a job's life.
*/}}
{{- define "kubetune.operatorRules" -}}
# FineTuneJobs: the operator's informer lists and watches them (and kopf those
# of sweeps); a reconcile before the informers have listed reads the job (get);
# a sweep changes its trials' runPolicy (patch); ttlSecondsAfterFinished deletes
# a finished job (delete).
- apiGroups: [kubetune.io]
  resources: [finetunejobs]
  verbs: [get, list, watch, patch, delete]
# The operator writes the status (patch). It never reads the subresource (get):
# it holds get only because the workers' Role in each namespace grants get and
# patch on FineTuneJob status (the admission policy worker-status-policy.yaml
# narrows that to a pod's own job), and RBAC lets a subject grant only what it holds.
- apiGroups: [kubetune.io]
  resources: [finetunejobs/status]
  verbs: [get, patch]
# Children carry ownerReferences with blockOwnerDeletion; where the
# OwnerReferencesPermissionEnforcement admission plugin is on (OpenShift, for
# one), that needs update on the owner's finalizers.
- apiGroups: [kubetune.io]
  resources: [finetunejobs/finalizers]
  verbs: [update]
# Worker pods: created, watched to notice failures (list, watch), deleted for
# gang restarts, suspension, deadlines and after failure.
- apiGroups: [""]
  resources: [pods]
  verbs: [create, list, watch, delete]
# A job's headless Service is only ever created (if absent): never read,
# changed or deleted; the garbage collector deletes it with its job. So is the
# workers' identity in a namespace (ServiceAccount kubetune-worker, its Role and
# RoleBinding), once, before the namespace's first worker pod; it stays.
# (No ConfigMaps: each worker pod carries the trainer's config itself.)
- apiGroups: [""]
  resources: [services, serviceaccounts]
  verbs: [create]
- apiGroups: [rbac.authorization.k8s.io]
  resources: [roles, rolebindings]
  verbs: [create]
# FineTuneSweeps: read and watched like jobs, their status written (patch); their
# trials are FineTuneJobs the operator creates and suspends or resumes (patch,
# above); their promotion pods are created like workers.
- apiGroups: [kubetune.io]
  resources: [finetunesweeps]
  verbs: [get, list, watch, patch]
- apiGroups: [kubetune.io]
  resources: [finetunesweeps/status]
  verbs: [patch]
- apiGroups: [kubetune.io]
  resources: [finetunejobs]
  verbs: [create]
- apiGroups: [kubetune.io]
  resources: [finetunesweeps/finalizers]
  verbs: [update]
# Events on FineTuneJobs and FineTuneSweeps (kubectl describe ftj / fts).
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- if .Values.kueue.enabled }}
# Kueue (kueue.enabled): a queued job's Workload is created, read and watched
# (get, list, watch), activated or deactivated on suspend (patch), its admission
# cleared after an eviction and marked Finished (status: patch). The garbage
# collector deletes it with its job; delete is held as Kueue's own job
# integrations hold it, though the operator makes no such call today.
- apiGroups: [kueue.x-k8s.io]
  resources: [workloads]
  verbs: [create, get, list, watch, patch, delete]
- apiGroups: [kueue.x-k8s.io]
  resources: [workloads/status]
  verbs: [get, patch]
# Where an admitted job's workers go, and the priority its label names.
- apiGroups: [kueue.x-k8s.io]
  resources: [resourceflavors, workloadpriorityclasses]
  verbs: [get]
{{- end }}
{{- end }}

{{/*
Cluster-wide only: kopf lists and watches CRDs to notice its resources appear,
change or go (without this it retries, logs errors and carries on).
*/}}
{{- define "kubetune.clusterRules" -}}
# kopf watches CRDs to notice its resources appear, change or go.
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [list, watch]
{{- end }}

{{/*
Leader election: the operator creates its Lease when there is none (RBAC
cannot name the object of a create), then reads and renews only that one.
*/}}
{{- define "kubetune.leaseRules" -}}
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  verbs: [create]
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  resourceNames: [{{ include "kubetune.leaseName" . | quote }}]
  verbs: [get, update]
{{- end }}
