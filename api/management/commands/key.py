"""`key create CLIENT …` · `key list [CLIENT]` · `key revoke ID …`: operators' API key work.

A created key is printed once, as the last line; nothing can show it again.
"""

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from api import selectors
from api.keys import ApiKey
from api.services.keys import expiry_from_days, key_create, key_revoke
from api.services.requests import now


class Command(BaseCommand):
    help = "Create, list and revoke clients' API keys."

    def add_arguments(self, parser):
        verbs = parser.add_subparsers(dest="verb", required=True)
        create = verbs.add_parser("create", help="a new key for a client (printed once)")
        create.add_argument("client", help="the client's username")
        create.add_argument("--name", default="created by manage.py key", help="what it is for")
        create.add_argument("--manage", action="store_true", help="may manage the client's keys")
        create.add_argument(
            "--allow",
            action="append",
            default=[],
            metavar="PATTERN",
            help='offers/deals it may call, e.g. "text/*" or "deal/starter" (repeatable)',
        )
        create.add_argument("--budget", type=int, help="credits per period")
        create.add_argument("--period", choices=["day", "week", "month"], default="month")
        create.add_argument("--rpm", type=int, help="intake requests per minute")
        create.add_argument("--max-in-flight", type=int, help="requests in flight at once")
        create.add_argument("--expires-in-days", type=int, help="days until it stops working")
        listing = verbs.add_parser("list", help="keys (never their secrets)")
        listing.add_argument("client", nargs="?", help="only this client's keys")
        revoke = verbs.add_parser("revoke", help="revoke keys by id")
        revoke.add_argument("ids", nargs="+", type=int, metavar="ID")

    def handle(self, *args, verb: str, **options):
        getattr(self, f"handle_{verb.replace('-', '_')}")(**options)

    def handle_create(self, *, client, name, manage, allow, budget, period, rpm, **options):
        user = _client(client)
        for flag, value in (
            ("--budget", budget),
            ("--rpm", rpm),
            ("--max-in-flight", options["max_in_flight"]),
            ("--expires-in-days", options["expires_in_days"]),
        ):
            if value is not None and value < 1:
                raise CommandError(f"{flag} must be 1 or more, not {value}")
        try:
            created = key_create(
                user=user,
                name=name,
                created_by="manage.py key",
                can_manage_keys=manage,
                allowed=allow,
                budget=budget,
                budget_period=period,
                rate_per_minute=rpm,
                max_in_flight=options["max_in_flight"],
                expires_at=expiry_from_days(options["expires_in_days"]),
            )
        except ValidationError as exc:
            raise CommandError(" ".join(exc.messages)) from None
        self.stdout.write(f"key {created.key.pk} for {user.username}: {created.key.display}")
        self.stdout.write(created.secret)

    def handle_list(self, *, client, **options):
        keys = selectors.key_list(user=_client(client) if client else None)
        at = now()
        self.stdout.write(
            f"{'id':>5}  {'client':<16} {'key':<24} {'state':<8} {'last used':<20} name"
        )
        for key in keys:
            used = key.last_used_at.strftime("%Y-%m-%d %H:%M:%SZ") if key.last_used_at else "-"
            self.stdout.write(
                f"{key.pk:>5}  {key.user.username:<16} {key.display:<24} {key.state(at):<8} "
                f"{used:<20} {key.name}"
            )

    def handle_revoke(self, *, ids, **options):
        keys = {key.pk: key for key in ApiKey.objects.filter(pk__in=ids)}
        missing = [str(i) for i in ids if i not in keys]
        if missing:
            raise CommandError(f"no key with id {', '.join(missing)}; nothing revoked")
        for key in keys.values():
            done = key_revoke(key=key, by="manage.py key")
            self.stdout.write(f"key {key.pk} {key.display}: {'revoked' if done else 'was revoked'}")


def _client(name: str):
    user = get_user_model().objects.filter(username=name).first()
    if user is None:
        raise CommandError(f"no client {name!r} (create it with manage.py create_client)")
    return user
