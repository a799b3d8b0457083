#!/usr/bin/env bash
# Prepare a Vault (or OpenBao) cluster for iris-token-broker on Kubernetes:
#   1. enable the KV v2 secrets engine at KV_MOUNT unless a mount of that name exists,
#   2. write vault/policy.hcl, rewritten for KV_MOUNT and KV_PREFIX, as POLICY_NAME,
#   3. enable the kubernetes auth method at AUTH_MOUNT unless it exists, and configure it
#      with K8S_HOST (skipped when K8S_HOST is empty, for a mount that is already set up),
#   4. create or update ROLE_NAME, bound to the service's ServiceAccount and namespace.
#
# Run it with a Vault token that may manage mounts, policies and auth methods, for
# example an operator's token. Every step can run again safely. The CLI reads its own
# address and token from its environment: VAULT_ADDR and VAULT_TOKEN for `vault`,
# BAO_ADDR and BAO_TOKEN for `bao`. VAULT_NAMESPACE (or BAO_NAMESPACE) is honoured too.
#
# Settings (environment variables, defaults in brackets):
#   VAULT_CLI             the CLI to run [vault]; set it to `bao` for OpenBao
#   KV_MOUNT              KV v2 mount, the chart's vault.kvMount [secret]
#   KV_PREFIX             prefix under the mount, the chart's vault.kvPrefix
#                         [iris-token-broker/accounts]
#   POLICY_NAME           name of the policy [iris-token-broker]
#   AUTH_MOUNT            path of the kubernetes auth method, the chart's
#                         vault.kubernetes.authMount [kubernetes]
#   K8S_HOST              the Kubernetes API URL that Vault sends TokenReviews to, e.g.
#                         https://kubernetes.default.svc:443 [empty: leave the config alone]
#   K8S_CA_CERT           PEM file of the Kubernetes API's CA [empty]
#   TOKEN_REVIEWER_JWT    file with a JWT allowed to create TokenReviews; empty makes Vault
#                         use the client's own token or, inside the cluster, its own [empty]
#   DISABLE_LOCAL_CA_JWT  true when Vault runs outside the cluster [false]
#   ROLE_NAME             role the service logs in with, the chart's vault.kubernetes.role
#                         [iris-token-broker]
#   SERVICE_ACCOUNT       the service's ServiceAccount name [iris-token-broker]
#   K8S_NAMESPACE         the namespace the service runs in (required)
#   TOKEN_TTL             TTL of the service's Vault token [1h]
#   TOKEN_MAX_TTL         lifetime after which the service must log in again [24h]
#   AUDIENCE              audience the ServiceAccount token must carry, the chart's
#                         vault.kubernetes.tokenAudience; empty accepts any [vault]
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cli=${VAULT_CLI:-vault}
kv_mount=${KV_MOUNT:-secret}
kv_prefix=${KV_PREFIX:-iris-token-broker/accounts}
policy_name=${POLICY_NAME:-iris-token-broker}
auth_mount=${AUTH_MOUNT:-kubernetes}
role_name=${ROLE_NAME:-iris-token-broker}
service_account=${SERVICE_ACCOUNT:-iris-token-broker}
token_ttl=${TOKEN_TTL:-1h}
token_max_ttl=${TOKEN_MAX_TTL:-24h}
audience=${AUDIENCE-vault}

kv_mount=${kv_mount%/}
kv_prefix=${kv_prefix#/}
kv_prefix=${kv_prefix%/}

if [[ -z "${K8S_NAMESPACE:-}" ]]; then
  echo "configure-kubernetes: K8S_NAMESPACE is missing: set it to the namespace the service runs in" >&2
  exit 2
fi
if ! command -v "$cli" >/dev/null 2>&1; then
  echo "configure-kubernetes: the CLI '$cli' was not found: install it or set VAULT_CLI" >&2
  exit 2
fi

# 1. KV v2.
if "$cli" secrets list | awk '{print $1}' | grep -qx "$kv_mount/"; then
  echo "KV mount $kv_mount/ exists; leaving it as it is (it must be KV version 2)"
else
  "$cli" secrets enable -path="$kv_mount" -version=2 kv
fi

# 2. The policy, with the default mount and prefix replaced like vault/local_server.py does.
sed -e "s|\"secret/|\"$kv_mount/|" -e "s|/iris-token-broker/accounts|/$kv_prefix|" \
  "$here/policy.hcl" | "$cli" policy write "$policy_name" -

# 3. The kubernetes auth method.
if "$cli" auth list | awk '{print $1}' | grep -qx "$auth_mount/"; then
  echo "Auth method $auth_mount/ exists"
else
  "$cli" auth enable -path="$auth_mount" kubernetes
fi
if [[ -n "${K8S_HOST:-}" ]]; then
  config_args=("kubernetes_host=$K8S_HOST" "disable_local_ca_jwt=${DISABLE_LOCAL_CA_JWT:-false}")
  if [[ -n "${K8S_CA_CERT:-}" ]]; then
    config_args+=("kubernetes_ca_cert=@$K8S_CA_CERT")
  fi
  if [[ -n "${TOKEN_REVIEWER_JWT:-}" ]]; then
    config_args+=("token_reviewer_jwt=@$TOKEN_REVIEWER_JWT")
  fi
  "$cli" write "auth/$auth_mount/config" "${config_args[@]}"
else
  echo "K8S_HOST is empty; keeping the existing configuration of auth/$auth_mount"
fi

# 4. The role: only this ServiceAccount in this namespace gets the policy.
role_args=(
  "bound_service_account_names=$service_account"
  "bound_service_account_namespaces=$K8S_NAMESPACE"
  "token_policies=$policy_name"
  "token_ttl=$token_ttl"
  "token_max_ttl=$token_max_ttl"
)
if [[ -n "$audience" ]]; then
  role_args+=("audience=$audience")
fi
"$cli" write "auth/$auth_mount/role/$role_name" "${role_args[@]}"

echo "Done: role $role_name at auth/$auth_mount grants policy $policy_name on $kv_mount/$kv_prefix"
