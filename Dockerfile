# syntax=docker/dockerfile:1
#
# One image for every syncnotify role: the default command runs the HTTP ingress;
# compose.yaml runs the same image as `syncnotify worker` and `syncnotify db upgrade`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

# An unprivileged user, and the spool directory it owns. A named volume mounted on
# /var/spool/syncnotify is first filled from the image, so it starts out owned by this user too.
RUN groupadd --system --gid 10001 syncnotify \
 && useradd --system --uid 10001 --gid syncnotify --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin syncnotify \
 && mkdir -p /var/spool/syncnotify \
 && chown syncnotify:syncnotify /var/spool/syncnotify \
 && chmod 0750 /var/spool/syncnotify

# .dockerignore is an allow-list: only pyproject.toml, README.md and the packages reach the
# build context (never .env, the venv, tests or a local spool).
WORKDIR /src
COPY . .
RUN pip install --no-cache-dir . \
 && rm -rf /src

# Run from a directory that holds no source, so imports come from site-packages.
WORKDIR /app
ENV SYNCNOTIFY_SPOOL_DIR=/var/spool/syncnotify

USER syncnotify:syncnotify

EXPOSE 8080

CMD ["syncnotify", "ingress", "--host", "0.0.0.0", "--port", "8080"]
