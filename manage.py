#!/usr/bin/env python
import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "vmportal.settings")
    from django.core.management import execute_from_command_line
    from django.db.utils import OperationalError

    try:
        execute_from_command_line(sys.argv)
    except OperationalError as exc:
        # A database that is down, missing or refuses the role: what to fix, not a traceback.
        # Host, port and name only: DATABASE_URL may carry a password.
        from django.conf import settings

        db = settings.DATABASES["default"]
        if db["ENGINE"] != "django.db.backends.postgresql":
            raise  # the demo's SQLite file: its own message says it all (locked, unwritable)
        where = f"{db.get('NAME')} on {db.get('HOST') or 'the local socket'}:{db.get('PORT') or 5432}"
        reason = str(exc).strip().splitlines()[0]
        sys.exit(f"manage.py: cannot use the database {where} (DATABASE_URL): {reason}\n"
                 "Check that PostgreSQL runs there, that the database exists "
                 f"(createdb -h {db.get('HOST') or 'localhost'} -U {db.get('USER') or 'postgres'} {db.get('NAME')}) "
                 "and that the role may connect.")


if __name__ == "__main__":
    main()
