"""Ask a running Dagster webserver to reload its code locations, as its *Reload definitions* button does."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

RELOAD = """mutation { reloadWorkspace {
  __typename
  ... on Workspace { locationEntries { name loadStatus } }
  ... on PythonError { message }
} }"""


def reload_code_locations(url: str, timeout_s: float = 120.0) -> tuple[bool, str]:
    """Reload every code location of the webserver at ``url``; returns (done, what happened, in words)."""
    request = urllib.request.Request(
        url.rstrip("/") + "/graphql",
        data=json.dumps({"query": RELOAD}).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            answer = json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        return False, f"no Dagster webserver answered at {url} (PASER_WEBSERVER): {reason}"
    result = (answer.get("data") or {}).get("reloadWorkspace") or {}
    if result.get("__typename") != "Workspace":
        problem = result.get("message") or answer.get("errors") or answer
        return False, f"the Dagster webserver at {url} did not reload: {problem}"
    names = ", ".join(entry["name"] for entry in result.get("locationEntries", []))
    return True, f"reloaded the code locations of the Dagster webserver at {url}: {names}"
