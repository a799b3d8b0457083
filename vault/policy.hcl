# Least-privilege policy for iris-token-broker on the default KV v2 mount `secret` and
# prefix `iris-token-broker/accounts`. vault/local_server.py rewrites both names when
# VAULT_KV_MOUNT or VAULT_KV_PREFIX differ; vault/configure-kubernetes.sh does the same
# with sed.
#
# The service may create, read, update, delete and list account entries under its own
# prefix and nothing else. It cannot destroy versions or delete an entry's metadata, so
# every deleted version stays recoverable by an operator.

# Write new credential versions, read the latest one, and soft-delete the latest one.
path "secret/data/iris-token-broker/accounts/*" {
  capabilities = ["create", "read", "update", "delete"]
}

# Soft-delete (uninstall) and restore (undelete) given versions of one account.
path "secret/delete/iris-token-broker/accounts/*" {
  capabilities = ["update"]
}
path "secret/undelete/iris-token-broker/accounts/*" {
  capabilities = ["update"]
}

# Read one account's version history, and list the accounts under the prefix. A LIST of
# the prefix itself is checked against "accounts/", which this glob matches too.
path "secret/metadata/iris-token-broker/accounts/*" {
  capabilities = ["read", "list"]
}

# Look up and renew the service's own token, so the policy works even on a token or
# role created without Vault's `default` policy.
path "auth/token/lookup-self" {
  capabilities = ["read"]
}
path "auth/token/renew-self" {
  capabilities = ["update"]
}
