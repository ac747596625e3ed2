#!/usr/bin/env bash
# Entry point of the notebook image.
#
# Run as root (as compose does), it makes the notebook user's UID and GID those of the
# owner of the mounted work folder, so files the notebook writes into ./src belong to the
# host user who owns ./src and stay editable there, whatever that user's UID; then it drops
# root for good. A root-owned folder is left alone: the user keeps NB_UID and a warning
# says how to make the folder writable. Run as any other user, it changes nothing.
set -euo pipefail

work="$HOME/work"

if [ -z "${JUPYTER_TOKEN:-}" ]; then
    # An empty token would switch authentication off; unset, Jupyter makes a random one
    # and prints the URL with it in the logs.
    unset JUPYTER_TOKEN
fi

if [ "$(id -u)" = 0 ]; then
    uid="$NB_UID"
    gid="$NB_GID"
    if [ -d "$work" ]; then
        owner_uid=$(stat -c %u "$work")
        owner_gid=$(stat -c %g "$work")
        if [ "$owner_uid" != 0 ]; then
            uid="$owner_uid"
            gid="$owner_gid"
        else
            echo "warning: $work is owned by root; the notebook user (uid $uid) may not write" \
                 "to it. Run 'sudo chown -R \$(id -u):\$(id -g) src' on the host." >&2
        fi
    fi
    if [ "$gid" != "$(id -g "$NB_USER")" ]; then
        if getent group "$gid" >/dev/null; then
            usermod -g "$gid" "$NB_USER"
        else
            groupmod -o -g "$gid" "$(id -gn "$NB_USER")"
        fi
    fi
    if [ "$uid" != "$(id -u "$NB_USER")" ]; then
        echo "notebook user $NB_USER takes uid $uid, gid $gid (owner of $work)"
        usermod -o -u "$uid" "$NB_USER"
    fi
    # usermod moves the home folder's own files; a mounted work folder is not touched.
    chown "$uid:$gid" "$HOME"
    exec setpriv --reuid "$uid" --regid "$gid" --init-groups --inh-caps=-all -- "$0" "$@"
fi

# Jupyter's own settings (address, port, folder) are in /etc/jupyter/jupyter_server_config.py.
exec "$@"
