"""The web console: sessions (live and recorded), audit search, SSH Shield bans, users and
workspaces, for roles ``admin`` and ``auditor``, served by the broker under ``/console/``.

::

    codes = await bus.key_value(LOGIN_BUCKET)
    sessions = Sessions(codes)
    app = create_console(identity=identity, authz=authorizer, store=store, sessions=sessions,
                         recordings=data_dir / "recordings", publisher=bus,
                         bans=shield.store, shield_settings=settings.shield)
    broker = BrokerServer.from_settings(..., mounts={PREFIX: app})
    code = await issue_login_code(codes, "alice")    # what `stockade console login` prints
    # with identity.oidc enabled: create_console(..., oidc=OidcSignIn(settings.identity.oidc,
    #                                                               login=identity.login_oidc))

Pages are rendered on the server (Jinja2) with htmx for partial updates; htmx and
asciinema-player come from the npm registry at ``make venv`` and are served from ``static/vendor``.
"""

from ._app import BAN_ACTION, CSP, KILL_ACTION, PREFIX, VIEW_ACTION, ConsoleIdentity, create_console
from ._auth import (
    CODE_TTL,
    COOKIE,
    LOGIN_BUCKET,
    SESSION_TTL,
    ConsoleSession,
    LoginCodes,
    Sessions,
    code_key,
    issue_login_code,
)
from ._chart import bucket_minutes, failures_svg
from ._live import tail_cast
from ._oidc import FLOW_COOKIE, FLOW_TTL, OidcSignIn, OidcSignInError

__all__ = [
    "BAN_ACTION",
    "CODE_TTL",
    "COOKIE",
    "CSP",
    "FLOW_COOKIE",
    "FLOW_TTL",
    "KILL_ACTION",
    "LOGIN_BUCKET",
    "PREFIX",
    "SESSION_TTL",
    "VIEW_ACTION",
    "ConsoleIdentity",
    "ConsoleSession",
    "LoginCodes",
    "OidcSignIn",
    "OidcSignInError",
    "Sessions",
    "bucket_minutes",
    "code_key",
    "create_console",
    "failures_svg",
    "issue_login_code",
    "tail_cast",
]
