# The bot as a container image: `docker build -t resident-bot .` (or `docker compose build`).
# It runs `resident-bot` in /srv/resident-bot as an unprivileged user; the SQLite database is in the volume
# /srv/resident-bot/data. Settings come from the environment (compose: env_file .env). See docs/operators.md.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /build
COPY pyproject.toml README.md ./
COPY bot bot
COPY domain domain
COPY handlers handlers
COPY scheduler scheduler
COPY storage storage
RUN pip install . && rm -rf /build

RUN useradd --system --create-home --home-dir /srv/resident-bot resident-bot \
    && mkdir /srv/resident-bot/data && chown resident-bot: /srv/resident-bot/data
USER resident-bot
WORKDIR /srv/resident-bot
VOLUME /srv/resident-bot/data

# Webhook mode listens here (WEBHOOK_URL set); long polling needs no port.
ENV WEBHOOK_LISTEN_HOST=0.0.0.0 WEBHOOK_LISTEN_PORT=8080
EXPOSE 8080
# SIGTERM stops the bot cleanly (it finishes what it holds within about 20 s).
STOPSIGNAL SIGTERM
CMD ["resident-bot"]
