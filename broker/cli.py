"""Operator commands: `flask --app wsgi accounts list|show|verify|uninstall|undelete`.

They use the service's own settings (the same environment variables) and its Vault store,
so they need a Vault token that the service's policy covers. No command prints a client
secret or an access token. A clientId is shown masked to its last 4 characters.
Each command exits with 0 on success and 1 when the account is missing or a call failed.
"""

from __future__ import annotations

import click
from flask import current_app
from flask.cli import AppGroup

from .account_history import AccountHistory, VersionInfo
from .errors import BrokerError
from .install import canonical_account_id
from .trackunit import TokenClient

accounts = AppGroup("accounts", help="Inspect and manage installed accounts in Vault.")


def _services():
    return current_app.extensions["broker"]


def _account_id(_context, _parameter, value: str) -> str:
    canonical = canonical_account_id(value)
    if canonical is None:
        raise click.BadParameter(
            f"{value!r} is not an account id: use a UUID such as 6b5cb246-7945-4bb6-bec5-2a1413ffd1b3"
        )
    return canonical


def _state(history: AccountHistory) -> str:
    latest = history.latest
    if latest is None or latest.destroyed:
        return "destroyed"
    if latest.deletion_time:
        return "uninstalled"
    return "installed"


@accounts.command("list")
@click.option("--all", "show_all", is_flag=True, help="Also list uninstalled and destroyed accounts.")
@click.option(
    "--progress-every",
    default=100,
    show_default=True,
    type=click.IntRange(min=1),
    help="Print progress to stderr after this many accounts.",
)
def list_accounts(show_all: bool, progress_every: int) -> None:
    """List installed accounts: id, state, latest version and its update time (UTC).

    Reads the metadata of each account, one Vault request each, so progress goes to
    stderr on long listings while the list itself goes to stdout.
    """
    store = _services().store
    account_ids = _checked(store.list_accounts)
    total = len(account_ids)
    shown = 0

    for position, account_id in enumerate(account_ids, start=1):
        history = _checked(lambda: store.history(account_id, with_fields=False))
        if history is not None and (show_all or history.installed):
            click.echo(f"{account_id}\t{_state(history)}\tv{history.current_version}\t{history.updated_time}")
            shown += 1
        if position % progress_every == 0 and position < total:
            click.echo(f"Checked {position} of {total} accounts", err=True)

    click.echo(f"{shown} account(s) listed of {total} in Vault", err=True)


@accounts.command("show")
@click.argument("account_id", callback=_account_id)
def show_account(account_id: str) -> None:
    """Show an account's state and install history from its KV versions, without secrets."""
    history = _checked(lambda: _services().store.history(account_id))
    if history is None:
        raise click.ClickException(f"Account {account_id} has no entry in Vault")

    click.echo(f"account:         {account_id}")
    click.echo(f"state:           {_state(history)}")
    click.echo(f"current version: {history.current_version}")
    click.echo(f"first install:   {history.created_time}")
    click.echo(f"last change:     {history.updated_time}")
    click.echo("versions:")
    for info in history.versions:
        click.echo(f"  {_describe_version(info)}")


def _describe_version(info: VersionInfo) -> str:
    parts = [f"v{info.version}", f"created {info.created_time}"]
    if info.destroyed:
        parts.append("destroyed")
    elif info.deletion_time:
        parts.append(f"deleted {info.deletion_time}")
    else:
        parts.append(f"installedAt {info.installed_at or '-'}")
        parts.append(f"irisAppId {info.iris_app_id or '-'}")
        parts.append(f"clientId {info.client_id_hint or '-'}")
    return ", ".join(parts)


@accounts.command("verify")
@click.argument("account_id", callback=_account_id)
def verify_account(account_id: str) -> None:
    """Exchange the account's stored credentials for a token now and print its scope and expiry.

    The token itself is discarded, not cached and never printed.
    """
    services = _services()
    credentials = _checked(lambda: services.store.load(account_id))
    if credentials is None:
        raise click.ClickException(f"Account {account_id} is not installed")

    issued = _checked(
        lambda: _token_client().fetch(
            account_id,
            credentials.client_id,
            credentials.client_secret,
            services.settings.trackunit_scopes,
        )
    )
    click.echo(
        f"Account {account_id} (version {credentials.version}) is valid: "
        f"scope '{issued.scope}', expires in {issued.expires_in} s"
    )


@accounts.command("uninstall")
@click.argument("account_id", callback=_account_id)
def uninstall_account(account_id: str) -> None:
    """Soft-delete the account's latest credentials, as an UNINSTALLED callback does."""
    version = _checked(lambda: _services().store.delete_latest(account_id))
    if version is None:
        raise click.ClickException(f"Account {account_id} has no live credentials to delete")
    # This runs outside the service, so running workers notice the deleted version at
    # their next coherence check, within TOKEN_COHERENCE_SECONDS.
    click.echo(f"Deleted version {version} of account {account_id}; undelete restores it")


@accounts.command("undelete")
@click.argument("account_id", callback=_account_id)
@click.option(
    "--version",
    "versions",
    type=click.IntRange(min=1),
    multiple=True,
    help="KV version to restore. May repeat. Default: the latest version.",
)
def undelete_account(account_id: str, versions: tuple[int, ...]) -> None:
    """Restore soft-deleted versions, by default the latest, so the account is installed again."""
    restored = _checked(
        lambda: _services().store.undelete(account_id, list(versions) or None)
    )
    if not restored:
        raise click.ClickException(
            f"Account {account_id} has no deleted version to restore "
            f"({'versions ' + ', '.join(map(str, versions)) if versions else 'latest version'})"
        )
    click.echo(f"Restored version(s) {', '.join(map(str, restored))} of account {account_id}")


def _token_client() -> TokenClient:
    settings = _services().settings
    return TokenClient(
        settings.trackunit_token_url,
        timeout=settings.trackunit_timeout,
        max_retries=settings.trackunit_max_retries,
        max_retry_after=settings.trackunit_max_retry_after,
        default_lifetime=settings.token_default_lifetime,
        max_lifetime=settings.token_max_lifetime,
    )


def _checked(operation):
    """Run a store or token call, turning a service error into a one-line CLI error."""
    try:
        return operation()
    except BrokerError as exc:
        raise click.ClickException(exc.message) from exc


def init_app(app) -> None:
    """Register the `accounts` command group on the app's CLI."""
    app.cli.add_command(accounts)
