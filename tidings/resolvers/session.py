"""Connection-level mutations: ``renewToken``."""

import datetime as dt

import strawberry
from strawberry.types import Info

from tidings.errors import BadUserInput
from tidings.resolvers.context import Context


@strawberry.type(description="The credentials a connection now holds.")
class TokenRenewal:
    sub: str | None
    account: str | None
    expires_at: dt.datetime | None


async def renew_token(info: Info, token: str) -> TokenRenewal:
    ctx: Context = info.context
    if ctx.connection is None:
        raise BadUserInput(
            "renewToken renews a WebSocket connection's token; send it over that connection", field="token"
        )
    principal = await ctx.connection.renew(token)
    expires = dt.datetime.fromtimestamp(principal.exp, dt.UTC) if principal.exp is not None else None
    return TokenRenewal(sub=principal.sub, account=principal.account, expires_at=expires)


RENEW_TOKEN = strawberry.mutation(
    renew_token,
    name="renewToken",
    description=(
        "Replace this WebSocket connection's token without dropping its subscriptions; "
        "the new token must name the same user and account."
    ),
)
