"""One HTTP POST to a receiver: the only network code of the webhooks (urllib, no dependency).

Success is a 2xx answer and nothing else: a redirect is not followed (a POST turned into a GET
by a 302 would be lost while looking delivered) and counts as a failure to retry."""

from __future__ import annotations

import http.client
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from urllib.parse import urlsplit

from orthanc_plugin.webhooks.model import is_loopback

# How much of a receiver's error answer is kept as last_error.
ERROR_TEXT_CHARS = 200

# (url, body, headers, timeout seconds) -> '' when delivered, else why not.
Post = Callable[[str, bytes, Mapping[str, str], float], str]


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def _opener(url: str) -> urllib.request.OpenerDirector:
    handlers: list[urllib.request.BaseHandler] = [_NoRedirect()]
    if is_loopback(urlsplit(url).hostname or ""):
        # A site's HTTP(S)_PROXY is for the outside world; a local receiver is reached directly.
        handlers.append(urllib.request.ProxyHandler({}))
    return urllib.request.build_opener(*handlers)


def post(url: str, body: bytes, headers: Mapping[str, str], timeout: float) -> str:
    request = urllib.request.Request(url, data=body, headers=dict(headers), method="POST")
    try:
        with _opener(url).open(request, timeout=timeout) as answer:
            status = int(answer.status)
            if 200 <= status < 300:
                return ""
            return f"HTTP {status}"
    except urllib.error.HTTPError as error:
        try:
            text = error.read(ERROR_TEXT_CHARS).decode("utf-8", "replace").strip()
        except Exception:
            text = ""
        return f"HTTP {error.code}" + (f": {text}" if text else "")
    except urllib.error.URLError as error:
        return f"not reached: {error.reason}"
    except (TimeoutError, OSError, ValueError, http.client.HTTPException) as error:
        return f"not reached: {type(error).__name__}: {error}"
