"""`create_client NAME [--credits N]`: a client user with an account and a new API key."""

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from api.services.accounts import account_grant, account_open
from api.services.keys import key_create


class Command(BaseCommand):
    help = (
        "Create (or update) a client user, add credits to its account, and print a new API "
        "key for it (able to manage the client's keys) as the last line. The key is shown "
        "only now; `manage.py key list` shows the client's keys without their secrets."
    )

    def add_arguments(self, parser):
        parser.add_argument("name", help="username of the client")
        parser.add_argument(
            "--credits", type=int, default=0, help="credits to add to the balance (default 0)"
        )
        parser.add_argument(
            "--key-name", default="created by create_client", help="name of the new key"
        )

    def handle(self, *args, name: str, credits: int, key_name: str, **options):
        if credits < 0:
            raise CommandError(f"--credits must be 0 or more, not {credits}")
        with transaction.atomic():
            user, created = self.client_user(name)
            account = account_open(user=user)
            if credits:
                account_grant(user=user, amount=credits, note="granted by create_client")
            account.refresh_from_db()
            new_key = key_create(
                user=user, name=key_name, can_manage_keys=True, created_by="create_client"
            )
        verb = "created" if created else "updated"
        self.stdout.write(
            f"client {user.username} {verb}: +{credits} credits, balance {account.balance}; "
            f"new key {new_key.key.display} (id {new_key.key.pk}), shown once:"
        )
        if not user.is_active:
            self.stderr.write(f"warning: {user.username} is inactive; its keys will be refused")
        self.stdout.write(new_key.secret)

    def client_user(self, name: str):
        User = get_user_model()
        try:
            User._meta.get_field(User.USERNAME_FIELD).run_validators(name)
        except ValidationError as exc:
            raise CommandError(f"invalid name {name!r}: {' '.join(exc.messages)}") from None
        user = User.objects.filter(username=name).first()
        if user is None:
            return User.objects.create_user(username=name), True  # no password: API keys only
        if user.is_staff or user.is_superuser:
            # A client key on a staff account would mix operator and client powers.
            raise CommandError(f"{name!r} is a staff user; clients must be separate users")
        return user, False
