"""Docker health check: GET /rt-gateway/health answers 200 (exit 0) or not (exit 1).

Credentials: RTGW_HEALTHCHECK_USER / RTGW_HEALTHCHECK_PASSWORD, else the first RegisteredUsers
entry of /etc/orthanc/rt-gateway.json. Standard library only (it runs in the image's python3).
"""

import base64
import json
import os
import sys
import urllib.error
import urllib.request

CONFIG = "/etc/orthanc/rt-gateway.json"
URL = os.environ.get("RTGW_HEALTHCHECK_URL", "http://127.0.0.1:8042/rt-gateway/health")


def credentials() -> tuple[str, str] | None:
    user = os.environ.get("RTGW_HEALTHCHECK_USER")
    if user:
        return user, os.environ.get("RTGW_HEALTHCHECK_PASSWORD", "")
    try:
        with open(CONFIG, encoding="utf-8") as handle:
            users = json.load(handle).get("RegisteredUsers") or {}
    except (OSError, ValueError):
        return None
    return next(iter(sorted(users.items())), None)


def main() -> int:
    request = urllib.request.Request(URL)
    pair = credentials()
    if pair:
        token = base64.b64encode(f"{pair[0]}:{pair[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=8) as answer:
            return 0 if answer.status == 200 else 1
    except urllib.error.HTTPError as error:
        problems = error.read().decode("utf-8", "replace")[:500]
        print(f"unhealthy: HTTP {error.code} {problems}")
        return 1
    except OSError as error:
        print(f"unhealthy: {error}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
