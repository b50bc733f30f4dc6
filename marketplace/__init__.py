"""Django project package: settings, URLs, WSGI, and the dev stack launcher."""
