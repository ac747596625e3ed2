"""Jupyter Server settings for the iris stack's notebook container."""

c = get_config()  # noqa: F821 (provided by Jupyter when it loads this file)

# Never open a browser inside the container, and keep the token in the logs (the only way
# a user without JUPYTER_TOKEN in .env can log in).
c.ServerApp.open_browser = False
# The notebook is reached through a published port on 127.0.0.1; the token guards it.
c.ServerApp.allow_remote_access = True
# Terminals are handy for `iris-train` and pip inside the container.
c.ServerApp.terminals_enabled = True
