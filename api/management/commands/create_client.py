"""`create_client NAME [--credits N]`: a client user with an account and an API token."""

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from rest_framework.authtoken.models import Token

from api.services.accounts import account_grant, account_open


class Command(BaseCommand):
    help = (
        "Create (or update) a client user, add credits to its account, and print its API "
        "token as the last line."
    )

    def add_arguments(self, parser):
        parser.add_argument("name", help="username of the client")
        parser.add_argument(
            "--credits", type=int, default=0, help="credits to add to the balance (default 0)"
        )

    def handle(self, *args, name: str, credits: int, **options):
        if credits < 0:
            raise CommandError(f"--credits must be 0 or more, not {credits}")
        with transaction.atomic():
            user, created = self.client_user(name)
            account = account_open(user=user)
            if credits:
                account_grant(user=user, amount=credits, note="granted by create_client")
            account.refresh_from_db()
            token, _ = Token.objects.get_or_create(user=user)
        verb = "created" if created else "updated"
        self.stdout.write(
            f"client {user.username} {verb}: +{credits} credits, balance {account.balance}"
        )
        if not user.is_active:
            self.stderr.write(f"warning: {user.username} is inactive; the token will be refused")
        self.stdout.write(token.key)

    def client_user(self, name: str):
        User = get_user_model()
        try:
            User._meta.get_field(User.USERNAME_FIELD).run_validators(name)
        except ValidationError as exc:
            raise CommandError(f"invalid name {name!r}: {' '.join(exc.messages)}") from None
        user = User.objects.filter(username=name).first()
        if user is None:
            return User.objects.create_user(username=name), True  # no password: API token only
        if user.is_staff or user.is_superuser:
            # A client token on a staff account would mix operator and client powers.
            raise CommandError(f"{name!r} is a staff user; clients must be separate users")
        return user, False
