"""Archive logins: the ESO archive's OpenID Connect token, as the archive issues it to programs.

ESO authenticates programmatic access to proprietary data with a token, not with HTTP basic
auth: a GET of its token endpoint (``https://www.eso.org/sso/oidc/token``) carrying the OAuth 2
password grant — the user's name and password with ESO's public client id — answers a JSON
document whose ``id_token`` (a JWT valid for hours) is then sent as ``Authorization: Bearer
<token>`` with every download and TAP request. This is what astroquery.eso does
(``EsoClass._authenticate``, ``_get_auth_header``).

The user name and password come from environment variables whose *names* are in the config
(``archive.eso.user_env`` / ``password_env``); neither variable set means anonymous access
(public data). No value — user, password or token — ever reaches a log, an exception or a table.
"""
from __future__ import annotations

import base64
import contextlib
import datetime as _dt
import json
import logging
from typing import Any, Callable, Iterator, Mapping

import requests

from .http import (ArchiveUnreachable, DownloadError, connect_failure, credentials_from_env,
                   describe_error, host_of, unreachable_message)

#: the OAuth 2 parameters ESO's token endpoint expects besides the user's name and password
ESO_TOKEN_GRANT = {"response_type": "id_token token", "grant_type": "password",
                   "client_id": "clientid", "client_secret": "clientSecret"}


class LoginError(DownloadError):
    """The archive refused the login, or answered it with something that is not a token."""


def token_expiry(token: str) -> _dt.datetime | None:
    """When a JWT expires (its payload's ``exp``), or None if the token does not say."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return _dt.datetime.fromtimestamp(float(claims["exp"]), tz=_dt.timezone.utc)
    except (IndexError, ValueError, KeyError, TypeError):
        return None


@contextlib.contextmanager
def _quiet_request_lines() -> Iterator[None]:
    """urllib3 logs each request line, query string included, at DEBUG: keep the one carrying
    the password out of any log, whatever level a caller set."""
    logger = logging.getLogger("urllib3.connectionpool")
    level = logger.level
    logger.setLevel(max(level, logging.INFO))
    try:
        yield
    finally:
        logger.setLevel(level)


def eso_token(token_url: str, user: str, password: str, *, user_env: str, password_env: str,
              timeout_s: float = 60.0) -> str:
    """ESO's bearer token for ``user``: the ``id_token`` of the token endpoint's answer.

    Errors name the environment variables and the endpoint, never a value. The password
    travels in the query string because that is how the endpoint takes it, so no exception
    text that could echo the URL is passed on.
    """
    params = {**ESO_TOKEN_GRANT, "username": user, "password": password}
    try:
        with _quiet_request_lines():
            response = requests.get(token_url, params=params, timeout=timeout_s)
    except requests.RequestException as exc:
        reason = describe_error(exc)
        if reason.startswith(f"{type(exc).__name__}:"):   # raw text, which may echo the URL
            reason = type(exc).__name__
        if connect_failure(exc):
            host = host_of(token_url)
            raise ArchiveUnreachable(unreachable_message(
                host, f"obtaining an ESO login token (user from {user_env})", reason),
                host=host) from None
        raise LoginError(f"ESO login at {token_url} failed: {reason}") from None
    if response.status_code in (400, 401, 403):
        raise LoginError(f"ESO login at {token_url} refused the user name and password in the "
                         f"environment variables {user_env} and {password_env} "
                         f"(HTTP {response.status_code}); check them")
    if response.status_code != 200:
        raise LoginError(f"ESO login at {token_url} answered HTTP {response.status_code}")
    try:
        token = response.json()["id_token"]
    except (ValueError, KeyError, TypeError):
        raise LoginError(f"ESO login at {token_url} answered without an id_token (content type "
                         f"{response.headers.get('Content-Type', '?')})") from None
    if not isinstance(token, str) or not token.strip():
        raise LoginError(f"ESO login at {token_url} answered an empty id_token")
    return token.strip()


def login_headers(login: Mapping[str, Any] | None, *, log: Callable[[str], Any] = print,
                  timeout_s: float = 60.0) -> dict[str, str]:
    """The headers that authenticate requests to an archive: ``{'Authorization': 'Bearer …'}``
    after logging in, ``{}`` for anonymous access.

    ``login`` is the archive's config block (``token_url``, ``user_env``, ``password_env``), or
    None for a public archive. Credentials are read from the named environment variables; with
    neither set the access is anonymous (half a pair is an error naming the missing one).
    """
    if not login or not login.get("user_env") or not login.get("password_env"):
        return {}
    user_env, password_env = str(login["user_env"]), str(login["password_env"])
    credentials = credentials_from_env(user_env, password_env)
    if credentials is None:
        log(f"login: {user_env} and {password_env} are not set; anonymous access (public data "
            f"only)")
        return {}
    user, password = credentials
    token = eso_token(str(login["token_url"]), user, password, user_env=user_env,
                      password_env=password_env, timeout_s=timeout_s)
    expiry = token_expiry(token)
    log(f"login: token from {login['token_url']} for the user in {user_env}"
        + (f", valid until {expiry:%Y-%m-%d %H:%M} UTC" if expiry else ""))
    return {"Authorization": f"Bearer {token}"}


__all__ = ["ESO_TOKEN_GRANT", "LoginError", "eso_token", "login_headers", "token_expiry"]
