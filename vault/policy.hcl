# Least-privilege policy for iris-token-broker on the default KV v2 mount `secret` and
# prefix `iris-token-broker/accounts`. vault/local_server.py rewrites both names when
# VAULT_KV_MOUNT or VAULT_KV_PREFIX differ.

# Write new credential versions and read the latest one.
path "secret/data/iris-token-broker/accounts/*" {
  capabilities = ["create", "read", "update"]
}

# Soft-delete (uninstall) and restore (undelete) versions of one account.
path "secret/delete/iris-token-broker/accounts/*" {
  capabilities = ["update"]
}
path "secret/undelete/iris-token-broker/accounts/*" {
  capabilities = ["update"]
}

# Read version history and list accounts for the operator commands.
path "secret/metadata/iris-token-broker/accounts/*" {
  capabilities = ["read", "list"]
}
path "secret/metadata/iris-token-broker/accounts" {
  capabilities = ["list"]
}
