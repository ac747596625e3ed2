"""Jupyter Server settings for the iris stack's notebook container: the one place for them."""

import os

c = get_config()  # noqa: F821 (provided by Jupyter when it loads this file)

# Listen on every interface of the container; compose publishes the port on 127.0.0.1 only.
c.ServerApp.ip = "0.0.0.0"  # noqa: S104 (inside the container)
c.ServerApp.port = 8888
# The mounted ./src (notebooks and the package) is what JupyterLab shows.
c.ServerApp.root_dir = os.path.join(os.environ["HOME"], "work")  # noqa: PTH118 (config file)
# Never open a browser inside the container, and keep the token in the logs (the only way
# a user without JUPYTER_TOKEN in .env can log in).
c.ServerApp.open_browser = False
# The notebook is reached through a published port on 127.0.0.1; the token guards it.
c.ServerApp.allow_remote_access = True
# Terminals are handy for `iris-train` and pip inside the container.
c.ServerApp.terminals_enabled = True
