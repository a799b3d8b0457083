"""Send a signed install callback to a running service, as Trackunit would.

The body follows Trackunit's tokenCallback message. The Trackunit-Identity header is
signed with the sandbox key in --signing-key-dir, whose public half the Trackunit
stand-in serves at /jwks. Prints the service's status and JSON reply.

    python sandbox/send_callback.py --service http://127.0.0.1:8080 \\
        --account 6b5cb246-7945-4bb6-bec5-2a1413ffd1b3 --client-id demo-client \\
        --client-secret demo-secret
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import requests

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sandbox.callback_signing import DEFAULT_KEY_DIR, load_or_create

HEADER = "Trackunit-Identity"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Send a signed Trackunit install callback.")
    parser.add_argument(
        "--service", default="http://127.0.0.1:8080", help="base URL of the service"
    )
    parser.add_argument("--path", default="/appinstall", help="callback path (APPINSTALL_PATH)")
    parser.add_argument("--account", required=True, help="accountId, a UUID")
    parser.add_argument("--client-id", required=True, help="clientId to install")
    parser.add_argument("--client-secret", required=True, help="clientSecret to install")
    parser.add_argument("--app-id", default="@sandbox/iris-token-broker", help="irisAppId")
    parser.add_argument("--type", default="INSTALLED", help="event type")
    parser.add_argument("--lifetime", type=int, default=300, help="token lifetime in seconds")
    parser.add_argument(
        "--signing-key-dir",
        type=Path,
        default=DEFAULT_KEY_DIR,
        help="directory of the sandbox signing key (default .local/sandbox)",
    )
    parser.add_argument(
        "--unsigned", action="store_true", help="send no Trackunit-Identity header (expect 401)"
    )
    args = parser.parse_args(argv)

    body = {
        "type": args.type,
        "irisAppId": args.app_id,
        "accountId": args.account,
        "clientId": args.client_id,
        "clientSecret": args.client_secret,
    }
    headers = {"Content-Type": "application/json"}
    if not args.unsigned:
        signing_key = load_or_create(args.signing_key_dir)
        headers[HEADER] = signing_key.sign_callback(body, lifetime=args.lifetime)

    url = args.service.rstrip("/") + args.path
    try:
        response = requests.post(url, data=json.dumps(body), headers=headers, timeout=10)
    except requests.RequestException as exc:
        print(f"POST {url} failed: {type(exc).__name__}; is the service running?", file=sys.stderr)
        return 1

    print(f"HTTP {response.status_code}")
    print(response.text.strip())
    return 0 if response.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
