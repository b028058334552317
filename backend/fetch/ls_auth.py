"""The ``Authorization`` header for one Label Studio and API key, with label-studio-sdk's token handling.

A legacy token is sent as ``Token <key>``. A personal access token (a JWT refresh token) is exchanged
by the sdk (``label_studio_sdk.tokens.client_ext.TokensClientExt``: ``POST /api/token/refresh/``) for
a short-lived access token, sent as ``Bearer <access>``; the sdk refreshes it when it expires. The
exchange is shared by every request of the process (one sdk client per Label Studio and key), and is
done again once when Label Studio answers 401 (an access token revoked early).

Where the header may go is not decided here: the downloader (:mod:`backend.fetch.download`) attaches it
only on a connection to :attr:`LabelStudioAuth.origin`.
"""
from __future__ import annotations

import hashlib
import threading

import httpx
from label_studio_sdk.core.api_error import ApiError
from label_studio_sdk.core.client_wrapper import SyncClientWrapper

from backend.fetch.policy import ImageFetchError
from backend.fetch.urls import HttpURL, URLRefused, parse_http_url

PAT_HELP = ("create a personal access token in Label Studio (Account & Settings -> Personal Access Token) "
            "and set it as LABEL_STUDIO_API_KEY for the backend")


class LabelStudioAuth:
    """Credentials for the Label Studio at ``base_url``.

    ``source`` says where ``api_key`` came from, for error messages: ``"LABEL_STUDIO_API_KEY"`` or
    ``"/setup"`` (the project creator's legacy token that Label Studio sends with ``/setup``).
    """

    #: (base URL, sha256 of the key) -> the sdk client wrapper holding the access token
    _access: dict[tuple[str, str], SyncClientWrapper] = {}
    _lock = threading.Lock()

    def __init__(self, base_url: str, api_key: str | None, *, timeout_s: float = 10.0,
                 source: str = "LABEL_STUDIO_API_KEY"):
        try:
            self.location: HttpURL = parse_http_url(base_url.rstrip("/") or base_url)
        except URLRefused as exc:
            raise ImageFetchError(f"Label Studio's address is not usable: {exc}") from None
        self.base_url = self.location.url.rstrip("/")
        self.api_key = api_key or None
        self.timeout_s = timeout_s
        self.source = source
        self.is_personal_token = bool(api_key) and _is_refresh_token(api_key)
        self._key = (self.base_url, hashlib.sha256((api_key or "").encode()).hexdigest())

    @property
    def origin(self) -> tuple[str, str, int]:
        """(scheme, host, port) of Label Studio: the only connection the header is sent on."""
        return self.location.origin

    def owns(self, url: HttpURL | str) -> bool:
        """True when ``url`` (parsed strictly) is on this Label Studio's origin."""
        if isinstance(url, str):
            try:
                url = parse_http_url(url)
            except URLRefused:
                return False
        return url.origin == self.origin

    def describe_token(self) -> str:
        kind = "personal access token" if self.is_personal_token else "legacy token"
        where = ("LABEL_STUDIO_API_KEY" if self.source == "LABEL_STUDIO_API_KEY" else
                 "the token Label Studio sent with /setup (the project creator's legacy token)")
        return f"the {kind} from {where}"

    def headers(self) -> dict[str, str]:
        if not self.api_key:
            return {}
        if not self.is_personal_token:
            return {"Authorization": f"Token {self.api_key}"}
        with self._lock:
            client = self._access.get(self._key)
            if client is None:
                client = self._access[self._key] = self._client()
        try:
            return {"Authorization": client.get_headers()["Authorization"]}
        except ApiError as exc:
            self.invalidate()
            raise ImageFetchError(f"Label Studio refused {self.describe_token()} (POST "
                                  f"{self.location.shown().rstrip('/')}/api/token/refresh/ -> HTTP "
                                  f"{exc.status_code}); {PAT_HELP}") from None
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            self.invalidate()
            raise ImageFetchError(f"could not exchange {self.describe_token()} at "
                                  f"{self.location.shown().rstrip('/')}/api/token/refresh/: "
                                  f"{type(exc).__name__}") from None

    def invalidate(self) -> None:
        """Forget the access token (the next :meth:`headers` exchanges the personal token again)."""
        with self._lock:
            client = self._access.pop(self._key, None)
        if client is not None:
            client.httpx_client.httpx_client.close()

    def _client(self) -> SyncClientWrapper:
        http = httpx.Client(timeout=self.timeout_s, follow_redirects=False, trust_env=False)
        try:
            # the sdk joins "api/token/refresh/" to this, so it ends with "/" (Label Studio under a path)
            return SyncClientWrapper(api_key=self.api_key, base_url=self.base_url + "/", httpx_client=http,
                                     timeout=self.timeout_s)
        except ApiError as exc:  # an expired personal access token, or one without an expiry
            http.close()
            detail = exc.body.get("detail") if isinstance(exc.body, dict) else exc.body
            raise ImageFetchError(f"{self.describe_token()} is not usable ({detail}); {PAT_HELP}") from None


def _is_refresh_token(key: str) -> bool:
    """A JWT (decoded by PyJWT, without verification: only Label Studio can verify it)."""
    import jwt

    try:
        claims = jwt.decode(key, options={"verify_signature": False})
    except jwt.InvalidTokenError:
        return False
    return claims.get("token_type", "refresh") == "refresh"
