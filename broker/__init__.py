"""iris-token-broker: keeps Trackunit Iris App credentials in Vault and serves access tokens."""
